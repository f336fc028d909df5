"""Warning signals caught before a training loop exists; torch-free, so it can be the first import.

``cluster.task_runner`` installs ``remember_early`` first thing; ``cluster.stop_signal.StopFlag``
adopts what it caught.
"""

import signal
import time
from types import FrameType

# Signals a job may name as its warning (cluster.signal), and SIGTERM, Slurm's last word before SIGKILL.
WARNING_SIGNALS = ("USR1", "USR2", "TERM", "HUP", "QUIT", "ALRM")
# name -> time.monotonic() of each warning caught before any StopFlag existed
EARLY: dict[str, float] = {}


def remember_early(number: int, frame: FrameType | None) -> None:
    EARLY.setdefault(signal.Signals(number).name.removeprefix("SIG"), time.monotonic())


def install() -> None:
    for name in WARNING_SIGNALS:
        signal.signal(getattr(signal, f"SIG{name}"), remember_early)
