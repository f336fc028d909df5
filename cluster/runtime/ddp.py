"""DDP, made to resume bit for bit over more than two ranks."""

from typing import Any

from torch.nn.parallel import DistributedDataParallel


def settle_buckets(ddp: DistributedDataParallel, sample: Any) -> None:
    """Run one backward that changes nothing, so that DDP lays out its gradient buckets now: call it once, right
    after wrapping, with an input batch (``cluster.settle_buckets(model, torch.stack([dataset[0][0]] * 2))``).

    DDP lays them out again after its first backward, in the order gradients became ready. Bucket boundaries
    decide how an all-reduce over more than two ranks chunks and orders its sums, so the step after a resume
    (a new DDP's first) rounded differently from the same step of an uninterrupted run, which was already on the
    second layout. In eval mode (no dropout draw, no batch-norm update), and the gradients are dropped.
    """
    was_training = ddp.training
    ddp.eval()
    ddp(sample).float().sum().backward()
    ddp.zero_grad(set_to_none=True)
    ddp.train(was_training)
