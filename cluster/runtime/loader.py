"""Batches of a map-style dataset for one data-parallel replica, epoch after epoch, resumable at any step and
on any number of replicas.

Which samples make up a step depends only on the seed, the epoch and the global batch (``batch_size`` x
``replicas``): each epoch is one shuffle of the whole dataset, cut into global batches, and each replica
takes its share of the step's batch. So a run resumed on another number of ranks goes on with the same
samples, none skipped or repeated. The position is counted in steps handed to the loop (not drawn by the
loader, whose workers fetch ahead), so a checkpoint taken at a step boundary says exactly what comes next.

Random augmentation is drawn per sample: before a sample is read, torch's, Python's and NumPy's global
generators are seeded from (seed, epoch, index), as torchvision's transforms draw from them (when reading
the first items moves a generator; a dataset that draws nothing is read as it is, at no cost). A sample's
augmentation is then the same whichever rank or worker reads it, and whenever: exact after a resume with
``num_workers`` > 0 and on another number of ranks. In the loop's own process the generators are put back
after each batch, so the rank's own stream (dropout) is not disturbed.
"""

import random
from collections.abc import Iterator
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, Sampler

try:
    import numpy
except ImportError:  # pragma: no cover  (torch works without NumPy; then there is no NumPy generator to seed)
    numpy = None  # type: ignore[assignment]


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """The seed a sample's random draws start from: distinct for every (epoch, index) of a run."""
    return ((seed * 1_000_003 + epoch) * 4_294_967_311 + index) % (2**63)


def _seed_generators(value: int) -> None:
    torch.default_generator.manual_seed(value)  # the CPU generator only: torch.manual_seed costs 90 us more
    random.seed(value)
    if numpy is not None:
        numpy.random.seed(value % 2**32)


class _Generators:
    """The global generators' states in this process, to put back."""

    def __init__(self) -> None:
        self.torch = torch.default_generator.get_state()
        self.python = random.getstate()
        self.numpy: Any = numpy.random.get_state() if numpy is not None else None  # (kind, keys, position, ...)

    def restore(self) -> None:
        torch.default_generator.set_state(self.torch)
        random.setstate(self.python)
        if numpy is not None:
            numpy.random.set_state(self.numpy)

    def same_as(self, other: "_Generators") -> bool:
        numpy_same = self.numpy is None or (self.numpy[2:] == other.numpy[2:]
                                            and bool((self.numpy[1] == other.numpy[1]).all()))
        return torch.equal(self.torch, other.torch) and self.python == other.python and numpy_same


def draws_at_random(dataset: Dataset, probes: int = 3) -> bool:
    """Whether reading an item draws from a global generator (a random augmentation), tried on the first items;
    the generators are left as they were."""
    kept = _Generators()
    try:
        for index in range(min(probes, len(dataset))):  # type: ignore[arg-type]
            before = _Generators()
            dataset[index]
            if not _Generators().same_as(before):
                return True
        return False
    finally:
        kept.restore()


def _next_keeping(batches: Iterator[Any], *, keep: bool) -> Any:
    """The next batch; with ``keep``, this process's generators are put back as they were before it was read
    (its samples were seeded here, and the rank's own stream must not move)."""
    kept = _Generators() if keep else None
    try:
        return next(batches)
    finally:
        if kept is not None:
            kept.restore()


class _Seeded(Dataset):
    """The dataset, read by (epoch, index) keys: each sample's draws seeded from its own key (``seeded``; a
    dataset that draws nothing is read as it is: seeding costs ~9 us a sample, a fifth of a small model's step)."""

    def __init__(self, dataset: Dataset, seed: int, *, seeded: bool):
        self.dataset, self.seed, self.seeded = dataset, seed, seeded

    def __getitem__(self, key: tuple[int, int]) -> Any:
        epoch, index = key
        if self.seeded:
            _seed_generators(sample_seed(self.seed, epoch, index))
        return self.dataset[index]

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]


class _Share(Sampler[tuple[int, int]]):
    """This replica's keys of one epoch, from step ``start`` on: its slice of each global batch."""

    def __init__(self, order: list[int], *, epoch: int, start: int, steps: int, batch_size: int, replicas: int,
                 replica: int):
        self.order, self.epoch, self.start, self.steps = order, epoch, start, steps
        self.batch_size, self.replicas, self.replica = batch_size, replicas, replica

    def __iter__(self) -> Iterator[tuple[int, int]]:
        step_size = self.batch_size * self.replicas
        for step in range(self.start, self.steps):
            first = step * step_size + self.replica * self.batch_size
            for index in self.order[first:first + self.batch_size]:
                yield self.epoch, index

    def __len__(self) -> int:
        return (self.steps - self.start) * self.batch_size


class ResumableLoader:
    """A ``DataLoader`` for one replica, with a position a checkpoint can hold (``state_dict``).

    Iterating gives the rest of the current epoch, one batch of ``batch_size`` samples per step; at its end
    the next epoch begins, with a new shuffle (``seed + epoch``). The epoch's last samples that do not fill a
    global batch are left out. ``replicas``/``replica`` default to the process group's size and rank; ranks of
    one pipeline share a replica. Put it in the state ``Job.save`` saves, or call ``seek(step)`` when the
    step says where the data is. ``loader_options`` go to the ``DataLoader`` (``num_workers``, ...).
    """

    def __init__(self, dataset: Dataset, batch_size: int, *, shuffle: bool = True, seed: int = 0,
                 replicas: int | None = None, replica: int | None = None, **loader_options: Any):
        self.dataset, self.batch_size, self.shuffle, self.seed = dataset, batch_size, shuffle, seed
        self.replicas = dist.get_world_size() if replicas is None else replicas
        self.replica = dist.get_rank() if replica is None else replica
        self.loader_options = loader_options
        self.seeded = draws_at_random(dataset)  # whether samples are read with generators seeded for each
        if len(self) == 0:
            raise ValueError(f"the dataset has {len(dataset)} samples (len(dataset)), fewer than one batch of "  # type: ignore[arg-type]
                             f"{batch_size} for each of {self.replicas} replicas; use a smaller batch or more data")
        self.epoch, self.batch = 0, 0  # where the next batch comes from

    @property
    def global_batch_size(self) -> int:
        """Samples per step over all replicas: what the position is counted in."""
        return self.batch_size * self.replicas

    def __len__(self) -> int:
        """Steps (batches) in one epoch."""
        return len(self.dataset) // self.global_batch_size  # type: ignore[arg-type]

    def _order(self) -> list[int]:
        if not self.shuffle:
            return list(range(len(self.dataset)))  # type: ignore[arg-type]
        generator = torch.Generator().manual_seed(self.seed + self.epoch)  # as DistributedSampler.set_epoch
        return torch.randperm(len(self.dataset), generator=generator).tolist()  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[Any]:
        share = _Share(self._order(), epoch=self.epoch, start=self.batch, steps=len(self), batch_size=self.batch_size,
                       replicas=self.replicas, replica=self.replica)
        # A generator of its own, though the draws are seeded per sample: a DataLoader takes its workers' base
        # seed from it, and taking it from the global one would move the rank's stream (dropout).
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        loader = DataLoader(_Seeded(self.dataset, self.seed, seeded=self.seeded), batch_size=self.batch_size,
                            sampler=share, generator=generator, **self.loader_options)
        in_process = self.seeded and not loader.num_workers  # samples seeded here, among the rank's generators
        batches = iter(loader)
        while True:
            try:
                batch = _next_keeping(batches, keep=in_process)
            except StopIteration:
                break
            self.batch += 1
            yield batch
        self.epoch, self.batch = self.epoch + 1, 0

    def seek(self, steps: int) -> None:
        """Go to the position after ``steps`` steps from the start of epoch 0."""
        self.epoch, self.batch = divmod(steps, len(self))

    def state_dict(self) -> dict[str, int]:
        # After an epoch's last batch the position is the next epoch's start (a loop over epochs resumed there
        # must not meet an empty one).
        epoch, batch = divmod(self.epoch * len(self) + self.batch, len(self))
        return {"epoch": epoch, "batch": batch, "global_batch_size": self.global_batch_size}

    def load_state_dict(self, state: dict[str, int]) -> None:
        saved = int(state.get("global_batch_size", self.global_batch_size))
        if saved != self.global_batch_size:
            raise ValueError(f"the checkpoint's data position counts steps of {saved} samples, and this loader's "
                             f"steps are {self.global_batch_size} (batch_size x replicas); keep the global batch "
                             "size of the run")
        self.epoch, self.batch = int(state["epoch"]), int(state["batch"])


class EvalLoader:
    """Batches of a validation dataset for one replica, each sample read by exactly one replica, once.

    Replica ``r`` of ``R`` reads the contiguous share ``[r*n//R, (r+1)*n//R)``, in order. Every replica yields the
    same number of full batches of ``batch_size``, with a ``mask`` that says which rows count: a sharded model
    (FSDP) runs one collective per forward, so every replica must run as many, and a pipeline hands on batches of
    one shape. The padding repeats a row already read (a replica with no sample at all, when there are more
    replicas than samples, reads the first one to have a shape). A sample's random draws (augmentation) are
    seeded from its index, as ``ResumableLoader`` does, and the process's generators are put back after each
    batch: an evaluation moves no stream of the training.
    """

    def __init__(self, dataset: Dataset, batch_size: int, *, seed: int = 0, replicas: int | None = None,
                 replica: int | None = None, **loader_options: Any):
        replicas = dist.get_world_size() if replicas is None else replicas
        replica = dist.get_rank() if replica is None else replica
        size = len(dataset)  # type: ignore[arg-type]
        self.share = list(range(replica * size // replicas, (replica + 1) * size // replicas))
        longest = -(-size // replicas)  # the largest share
        self.batches = -(-longest // batch_size)
        self.dataset, self.batch_size, self.seed, self.loader_options = dataset, batch_size, seed, loader_options
        self.seeded = draws_at_random(dataset)

    def __len__(self) -> int:
        return self.batches

    def __iter__(self) -> Iterator[tuple[Any, Any, torch.Tensor]]:
        """(inputs, targets, mask) per batch; ``mask[i]`` is False for the padding rows."""
        keys = [(-1, index) for index in self.share or [0]]  # epoch -1: draws of their own, not a training epoch's
        loader = DataLoader(_Seeded(self.dataset, self.seed, seeded=self.seeded), batch_size=self.batch_size,
                            sampler=keys, generator=torch.Generator().manual_seed(self.seed), **self.loader_options)
        in_process = self.seeded and not loader.num_workers
        batches, row = iter(loader), None
        for number in range(self.batches):
            real = min(self.batch_size, max(0, len(self.share) - number * self.batch_size))
            if real or row is None:
                inputs, targets = _next_keeping(batches, keep=in_process)
                row = (inputs[:1], targets[:1])
            else:  # this replica's share has ended: padding only
                inputs, targets = row
                inputs, targets = inputs[:0], targets[:0]
            inputs, targets = (torch.cat([part[:real], first.expand(self.batch_size - real, *first.shape[1:])])
                               for part, first in ((inputs, row[0]), (targets, row[1])))
            yield inputs, targets, torch.arange(self.batch_size) < real
