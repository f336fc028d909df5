"""A two-layer MLP as an ``nn.Sequential`` (a pipeline cuts it into two stages of two layers) whose gradients
overflow at one step: at optimizer step ``at``, the weight gradient of the first linear layer (stage 0) is
infinite, and with ``everywhere`` that of the last one too (stage 1), as an fp16 overflow makes them. fp16's
loss scaler must then skip that step on every rank, whichever of them saw the overflow. With ``once_file``, only
the first process to get there overflows (it leaves that file): a run resumed after the step does not again.
(DDP's bucket layout runs one backward pass before training: under ddp, ``at`` falls one step earlier.)"""

import math
from pathlib import Path

import torch
from torch import nn


def make_model(sample_shape: tuple[int, ...], num_classes: int, at: int = 5, everywhere: bool = False,
               microbatches: int = 1, hidden: int = 64, once_file: str = "") -> nn.Sequential:
    model = nn.Sequential(nn.Flatten(), nn.Linear(math.prod(sample_shape), hidden), nn.ReLU(),
                          nn.Linear(hidden, num_classes))
    for layer in (model[1], model[3]) if everywhere else (model[1],):
        calls = [0]

        def overflow(grad: torch.Tensor, calls: list[int] = calls) -> torch.Tensor:
            calls[0] += 1  # one call per micro-batch's backward
            step = (calls[0] - 1) // microbatches + 1
            if step != at or (once_file and Path(once_file).exists()):
                return grad
            if once_file:
                Path(once_file).touch()
            return torch.full_like(grad, math.inf)

        layer.weight.register_hook(overflow)
    return model
