"""A loss as the trainer calls it: ``(output, target) -> scalar``, its own settings as keyword arguments."""

import torch
from torch import nn


def smooth_ce(output: torch.Tensor, target: torch.Tensor, smoothing: float = 0.0) -> torch.Tensor:
    return nn.functional.cross_entropy(output, target, label_smoothing=smoothing)
