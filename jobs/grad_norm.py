"""The gradient's global norm and clipping by it (``train.grad_clip_norm``).

The norm is the whole model's, whatever holds its pieces: under FSDP2 each rank holds a shard of every gradient
(DTensors: their norm is summed over the shards), under a pipeline each rank the gradients of its stages (the
squares are summed over the ranks of one pipeline), under DDP every replica the same whole. So every rank
clips by the same factor, the one a single process would use (torchtitan's ``clip_grad_norm_`` does the same).
"""

from collections.abc import Iterable

import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor


def global_grad_norm(parameters: Iterable[torch.nn.Parameter], *, pp_group: dist.ProcessGroup | None = None
                     ) -> torch.Tensor:
    """The L2 norm of the whole model's gradient; ``pp_group``: the ranks of this rank's pipeline."""
    grads = [parameter.grad for parameter in parameters if parameter.grad is not None]
    norm = torch.nn.utils.get_total_norm(grads, norm_type=2.0)
    if isinstance(norm, DTensor):  # FSDP's shards: DTensor's ops sum them (a collective), full_tensor makes it plain
        norm = norm.full_tensor()
    if pp_group is not None:
        squared = norm.float() ** 2
        dist.all_reduce(squared, group=pp_group)
        norm = squared.sqrt()
    return norm


def clip_to(parameters: Iterable[torch.nn.Parameter], max_norm: float, norm: torch.Tensor) -> None:
    """Scale the gradients by ``max_norm / norm`` where the norm is larger (in place)."""
    torch.nn.utils.clip_grads_with_norm_(list(parameters), max_norm, norm)
