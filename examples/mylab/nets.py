"""A residual MLP: a stem, residual blocks in an ``nn.ModuleList``, a head. Not an ``nn.Sequential``: pipelines
cut it at ``strategy.split_points`` (``[blocks.2]``), FSDP shards each block (the members of its ModuleList)."""

import math

import torch
from torch import nn


class Block(nn.Module):
    def __init__(self, width: int, dropout: float):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.linear = nn.Linear(width, width)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(torch.relu(self.linear(self.norm(x))))


class ResMLP(nn.Module):
    def __init__(self, sample_shape: tuple[int, ...], num_classes: int, width: int = 64, depth: int = 4,
                 dropout: float = 0.0):
        super().__init__()
        self.stem = nn.Linear(math.prod(sample_shape), width)
        self.blocks = nn.ModuleList(Block(width, dropout) for _ in range(depth))
        self.head = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x.flatten(1))
        for block in self.blocks:
            x = x + block(x)
        return self.head(x)
