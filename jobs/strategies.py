"""Parallel strategies as plain functions: each takes a model and returns the module to train."""

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from jobs.config import StrategyConfig


def apply_ddp(model: nn.Module, *, device: torch.device, bucket_cap_mb: float) -> nn.Module:
    """Replicate ``model`` on every rank; gradients are averaged by all-reduce during backward.

    DDP broadcasts rank 0's parameters at construction, so every replica starts identical.
    """
    device_ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model.to(device), device_ids=device_ids, bucket_cap_mb=bucket_cap_mb)


def apply_single(model: nn.Module, *, device: torch.device) -> nn.Module:
    """One rank trains the whole model; nothing is communicated."""
    return model.to(device)


def apply_strategy(model: nn.Module, cfg: StrategyConfig, *, device: torch.device) -> nn.Module:
    if cfg.name == "ddp":
        return apply_ddp(model, device=device, bucket_cap_mb=cfg.bucket_cap_mb)
    return apply_single(model, device=device)


def unwrap(model: nn.Module) -> nn.Module:
    """The user's module inside a strategy's wrapper (state-dict keys without ``module.``)."""
    return model.module if isinstance(model, DistributedDataParallel) else model
