"""A dataset that writes down every sample it is asked for, one file per rank process
(``LOG/<world size>-<rank>-<pid>.txt``), so a test can see which samples each step of a run read."""

import os
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch.utils.data import Dataset


class Logged(Dataset):
    def __init__(self, size: int, log: str, dim: int = 16, classes: int = 4, delay_ms: float = 0.0):
        generator = torch.Generator().manual_seed(0)
        self.inputs = torch.randn(size, dim, generator=generator)
        self.labels = self.inputs[:, :classes].argmax(1)
        self.num_classes = classes
        self.log, self.delay_s = Path(log), delay_ms / 1000

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        name = f"{dist.get_world_size()}-{dist.get_rank()}-{os.getpid()}.txt"
        with open(self.log / name, "a") as file:
            file.write(f"{index}\n")
        time.sleep(self.delay_s)  # a slower read: a run long in time, short in steps
        return self.inputs[index], self.labels[index]


def make_dataset(size: int = 256, log: str = "", delay_ms: float = 0.0) -> Logged:
    return Logged(size, log, delay_ms=delay_ms)
