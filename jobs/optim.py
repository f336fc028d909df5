"""Optimizer and learning-rate schedule from their config."""

import math
from collections.abc import Iterable

import torch
from torch.optim.lr_scheduler import LambdaLR

from jobs.settings import OptimConfig


def build_optimizer(cfg: OptimConfig, params: Iterable[torch.nn.Parameter]) -> torch.optim.Optimizer:
    if cfg.name == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)


def lr_factor(step: int, *, warmup_steps: int, total_steps: int, schedule: str) -> float:
    """Multiplier of the peak lr for the update that follows ``step`` completed steps."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def build_scheduler(cfg: OptimConfig, optimizer: torch.optim.Optimizer, *, total_steps: int) -> LambdaLR:
    """Stepped once per optimizer step; its state (the step count) goes into checkpoints."""
    return LambdaLR(optimizer, lambda step: lr_factor(
        step, warmup_steps=cfg.warmup_steps, total_steps=total_steps, schedule=cfg.schedule))
