"""A warning signal sets a flag; all ranks agree on it at a step boundary.

Nothing is done inside the handler: saving there (as submitit's and Lightning's handlers do) races
the training step it interrupts, and a collective inside a handler can deadlock. The loop asks
``StopVote.poll()`` once per step; the vote is an all-reduce (MAX) of every rank's flag, started at
one boundary and read at the next, so it costs no waiting, and every rank stops at the same step
even when only one of them got the signal.
"""

import signal
import time
from types import FrameType

import torch
import torch.distributed as dist

from cluster.early_signals import EARLY


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


class StopVote:
    """Every rank's flag, reduced one step late without blocking; the same answer on every rank."""

    def __init__(self, flag: StopFlag, device: torch.device):
        self.flag = flag
        self._value = torch.zeros(1, device=device)
        self._work: dist.Work | None = None

    def poll(self) -> bool:
        """True when some rank had its flag set at the previous boundary (every rank gets the same answer)."""
        agreed = False
        if self._work is not None:
            self._work.wait()
            agreed = bool(self._value.item())
        self._value.fill_(1.0 if self.flag.set else 0.0)
        self._work = dist.all_reduce(self._value, op=dist.ReduceOp.MAX, async_op=True)
        return agreed

    def close(self) -> None:
        """Wait for the vote in flight: a collective must not outlive the loop."""
        if self._work is not None:
            self._work.wait()
            self._work = None
