"""Ctrl-C of a run in the foreground: the ranks stop at the next step boundary and save it; a second Ctrl-C
ends them at once.

A terminal sends SIGINT to every process of its foreground group: the launcher, submitit's local
controller and the ranks. The controller would take it as a ``KeyboardInterrupt`` and kill the ranks
a second later, mid-save, so it is started with SIGINT ignored (``ignoring_sigint``); the ranks catch
it themselves (``cluster.runtime.supervisor``: a stop, a save, exit 130) and the launcher only waits,
passing the signal on to them in case it was sent to the launcher alone (``kill -INT``). Torch-free.
"""

import contextlib
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

from cluster.rundir import read_events

RESEND_S = 2.0  # a rank still importing ignores SIGINT (it inherits the controller's SIG_IGN): tell it again


class Interrupted(Exception):
    """The user pressed Ctrl-C while the ranks ran; ``at_once``: twice, and the ranks were killed."""

    def __init__(self, at_once: bool):
        super().__init__("interrupted (Ctrl-C)")
        self.at_once = at_once


def children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (Linux ``/proc``)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # ended meanwhile
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:  # "pid (comm) state ppid ...": comm may hold spaces
            found.append(int(entry.name))
    return found


def descendants(pid: int) -> list[int]:
    """Every process below ``pid``, parents before their children."""
    out, queue = [], [pid]
    while queue:
        below = children(queue.pop(0))
        out += below
        queue += below
    return out


@contextlib.contextmanager
def ignoring_sigint() -> Iterator[None]:
    """Processes started in the block ignore SIGINT (an ignored signal stays ignored across ``exec``)."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


class CtrlC:
    """While installed: the first SIGINT is passed on to the ranks (the grandchildren of this process: the
    controller's children) and ``poll`` passes it again now and then; the second kills every process below
    this one and raises ``Interrupted(at_once=True)``."""

    def __init__(self) -> None:
        self.count = 0
        self._sent_at = 0.0
        self._previous: object = None

    def install(self) -> "CtrlC":
        self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def uninstall(self) -> None:
        signal.signal(signal.SIGINT, self._previous)  # type: ignore[arg-type]

    def _handle(self, number: int, frame: FrameType | None) -> None:
        self.count += 1
        if self.count == 1:
            self.poll()
            return
        for pid in descendants(os.getpid()):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        raise Interrupted(at_once=True)

    def poll(self) -> None:
        """After a Ctrl-C: SIGINT to the ranks again, every ``RESEND_S``."""
        if self.count != 1 or time.monotonic() - self._sent_at < RESEND_S:
            return
        self._sent_at = time.monotonic()
        for controller in children(os.getpid()):
            for rank in children(controller):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(rank, signal.SIGINT)


def interrupted_message(run_dir: Path, error: Interrupted, *, since: int) -> str:
    """What to tell the user after a Ctrl-C: where the run stopped, and how to go on (``since``: how many events
    the run directory held before this run)."""
    events = read_events(run_dir)
    if error.at_once:
        saved = max((e["step"] for e in events if e.get("event") == "checkpointed"), default=None)
        where = f"the checkpoint of step {saved} is" if saved is not None else "no checkpoint was written; nothing"
        return f"killed at once (second Ctrl-C); {where} kept: run the same command to resume"
    stop = next((e for e in reversed(events[since:])
                 if e.get("event") == "stopped" and e.get("cause") == "interrupt"), None)
    if stop is None:
        return "stopped (Ctrl-C) before the first step: run the same command to start again"
    return f"stopped at step {stop['step']} (Ctrl-C); run the same command to resume"
