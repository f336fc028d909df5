"""The seed article's SimpleModel, as it behaves on faulty nodes of the local Slurm cluster: its process dies
(SIGKILL, as a segfault or the OOM killer would end it) when it runs on the node named in ``crash_file``, and each
step of a job's first run takes ``slurm_step_ms`` longer on Slurm (a job long enough to lose a node in, whose
uninterrupted reference still runs fast on local ranks), and its ``fail_at``-th forward of every run raises (a bug
that a retry meets again at the same step). Otherwise it is ``model=mlp``, the seed article's model,
built the same way: the same digest as a run of ``model=mlp``."""

import math
import os
import signal
import time
from pathlib import Path

import torch

from jobs.networks import SimpleModel


class OnAFaultyNode(SimpleModel):
    def __init__(self, in_features: int, num_classes: int, crash_file: str, after: int, slurm_step_ms: float,
                 fail_at: int):
        super().__init__(in_features, 128, num_classes)
        self.crash_file, self.after, self.fail_at, self.calls = Path(crash_file), after, fail_at, 0
        first_run = os.environ.get("SLURM_RESTART_COUNT", "0") == "0"  # a requeued run catches up at full speed
        self.delay_s = slurm_step_ms / 1000 if os.environ.get("SLURM_JOB_ID") and first_run else 0.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        time.sleep(self.delay_s)
        if self.calls == self.fail_at:
            raise RuntimeError(f"injected fault in forward {self.calls}")
        if self.calls % self.after == 0 and self.crash_file.is_file():
            if self.crash_file.read_text().strip() == os.environ.get("SLURMD_NODENAME"):
                os.kill(os.getpid(), signal.SIGKILL)
        return super().forward(x)


def make_model(sample_shape: tuple[int, ...], num_classes: int, crash_file: str = "", after: int = 200,
               slurm_step_ms: float = 0.0, fail_at: int = 0) -> OnAFaultyNode:
    return OnAFaultyNode(math.prod(sample_shape), num_classes, crash_file, after, slurm_step_ms, fail_at)
