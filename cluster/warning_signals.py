"""A warning signal (preemption, the time limit, Ctrl-C's cousins) only sets a flag.

Nothing is done inside a handler: saving there (as submitit's and Lightning's handlers do) races
the training step it interrupts, and a collective inside a handler can deadlock. The ranks agree on
the flags at a step boundary (``cluster.runtime.stop_vote``).

Torch-free, so that a Slurm task can install ``install_early`` as its very first import
(``cluster.slurm.task_runner``): a warning that comes while torch is still being imported is
remembered, and the ``StopFlag`` installed later adopts it.
"""

import signal
import time
from types import FrameType

# Signals a job may name as its warning (cluster.signal), and SIGTERM, Slurm's last word before SIGKILL.
WARNING_SIGNALS = ("USR1", "USR2", "TERM", "HUP", "QUIT", "ALRM")
# name -> time.monotonic() of each warning caught before any StopFlag existed
EARLY: dict[str, float] = {}


def _remember_early(number: int, frame: FrameType | None) -> None:
    EARLY.setdefault(signal.Signals(number).name.removeprefix("SIG"), time.monotonic())


def install_early() -> None:
    """Catch every warning signal from now on, until a ``StopFlag`` takes over."""
    for name in WARNING_SIGNALS:
        signal.signal(getattr(signal, f"SIG{name}"), _remember_early)


class StopFlag:
    """Signal handlers that only remember which warning came first, and when."""

    def __init__(self, names: tuple[str, ...]):
        self.signals = tuple(dict.fromkeys(getattr(signal, f"SIG{name}") for name in names))
        self.received: str | None = None
        self.at: float | None = None  # time.monotonic() of the first warning
        self._previous: dict[int, object] = {}

    def install(self) -> "StopFlag":
        for number in self.signals:
            self._previous[number] = signal.signal(number, self._handle)
        caught = sorted((at, name) for name, at in EARLY.items()
                        if getattr(signal, f"SIG{name}") in self.signals)
        if caught and self.received is None:
            self.at, self.received = caught[0]
        return self

    def uninstall(self) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)  # type: ignore[arg-type]
        self._previous.clear()

    def _handle(self, number: int, frame: FrameType | None) -> None:
        if self.received is None:
            self.received, self.at = signal.Signals(number).name.removeprefix("SIG"), time.monotonic()

    @property
    def set(self) -> bool:
        return self.received is not None
