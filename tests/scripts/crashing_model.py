"""The seed article's SimpleModel, whose process dies (SIGKILL, as a segfault or the OOM killer would end it) when
it runs on the node named in a file: a node that breaks every job put on it. Where no such file exists it is the
plain model, so an uninterrupted run of the same config gives the reference digest."""

import math
import os
import signal
from pathlib import Path

import torch

from jobs.networks import SimpleModel


class CrashingOnANode(SimpleModel):
    def __init__(self, in_features: int, num_classes: int, crash_file: str, after: int):
        super().__init__(in_features, 128, num_classes)
        self.crash_file, self.after, self.calls = Path(crash_file), after, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.calls % self.after == 0 and self.crash_file.is_file():
            if self.crash_file.read_text().strip() == os.environ.get("SLURMD_NODENAME"):
                os.kill(os.getpid(), signal.SIGKILL)
        return super().forward(x)


def make_model(sample_shape: tuple[int, ...], num_classes: int, crash_file: str = "", after: int = 200
               ) -> CrashingOnANode:
    return CrashingOnANode(math.prod(sample_shape), num_classes, crash_file, after)
