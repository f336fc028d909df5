"""Parallel strategies as plain functions: each takes a model and returns the module to train."""

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import fully_shard  # public since torch 2.6, the oldest we support
from torch.nn.parallel import DistributedDataParallel


def apply_ddp(model: nn.Module, *, device: torch.device, bucket_cap_mb: float,
              group: dist.ProcessGroup | None = None) -> nn.Module:
    """Replicate ``model`` on every rank of ``group`` (all ranks by default); gradients are averaged by
    all-reduce during backward.

    DDP broadcasts the group's first rank's parameters at construction, so every replica starts identical.
    """
    device_ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model.to(device), device_ids=device_ids, bucket_cap_mb=bucket_cap_mb,
                                   process_group=group)


def apply_fsdp(model: nn.Module, *, mesh: DeviceMesh) -> nn.Module:
    """Shard parameters, gradients and optimizer state over ``mesh`` (FSDP2's ``fully_shard``).

    Each child with parameters (a transformer block, a layer) is its own unit, so only one unit's
    parameters are gathered at a time; the root takes what is left. Gradients are averaged over the
    mesh by reduce-scatter, as DDP's all-reduce does.
    """
    for child in model.children():
        if any(True for _ in child.parameters()):
            fully_shard(child, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def apply_single(model: nn.Module, *, device: torch.device) -> nn.Module:
    """One rank trains the whole model; nothing is communicated."""
    return model.to(device)


def unwrap(model: nn.Module) -> nn.Module:
    """The user's module inside a strategy's wrapper (state-dict keys without ``module.``)."""
    return model.module if isinstance(model, DistributedDataParallel) else model
