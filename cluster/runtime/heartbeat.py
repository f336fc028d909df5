"""Every rank says, from a thread of its own, that it is alive and how far it got; a watcher finds a rank gone silent
or a job that stopped moving, without waiting on any collective.

A collective waiting on a frozen or dead rank returns only at its own timeout (10 minutes by default,
for gloo and NCCL alike), and then names nobody. Here each rank's ``Heartbeat`` thread rewrites its
file in the run directory's ``heartbeats/`` every ``interval_s`` with a counter, its host, pid, step
and phase; it keeps beating while the rank's main thread is blocked, and stops only when the process
is frozen (SIGSTOP, a node gone into swap), dead, or its node lost. ``Watch`` reads the files and
says, on the reader's own clock (the nodes' clocks never meet), which ranks stopped beating for
``timeout_s`` (``silent``), or whether every rank is training yet no step ended for ``timeout_s``
(``stalled``: a collective deadlock; the ranks behind the others are the suspects). ``Watchman`` is one
rank's part: its heartbeat and its watching thread, which the supervisor asks to act. Files on the
shared file system, not the job's TCP store: the store lives in rank 0's process, which may be the
frozen one. Torch-free.
"""

import contextlib
import dataclasses
import json
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

# Phases a rank reports. "training": between two step boundaries (the only phase a stall is judged in);
# "busy": a long step of the library's own (a checkpoint's copy, the end); "exited": it left on purpose.
SETUP, TRAINING, BUSY, EXITED = "setup", "training", "busy", "exited"


def interval_for(timeout_s: float) -> float:
    """How often a rank beats: a tenth of the timeout, between 0.5 and 5 s (a file write each time)."""
    return min(5.0, max(0.5, timeout_s / 10))


def beat_path(folder: Path, rank: int) -> Path:
    return folder / f"rank-{rank:05d}"


@dataclasses.dataclass
class Beat:
    """What one rank's file says."""

    rank: int
    host: str
    pid: int
    beat: int  # counts up with every write: a file that stops changing is a rank that stopped
    step: int
    phase: str
    run: str  # "job/restart": a file left by an earlier run of the job is not this run's

    @staticmethod
    def read(path: Path) -> "Beat | None":
        try:
            return Beat(**json.loads(path.read_text()))
        except (OSError, ValueError, TypeError):  # not written yet, or caught mid-write: the next look sees it
            return None


class Heartbeat:
    """This rank's beating thread; the main thread sets ``step`` and ``phase`` (plain assignments, no lock)."""

    def __init__(self, folder: Path, *, rank: int, run: str, interval_s: float):
        folder.mkdir(parents=True, exist_ok=True)
        self.path, self.interval_s = beat_path(folder, rank), interval_s
        self.rank, self.run = rank, run
        self.step, self.phase = 0, SETUP
        self.failing = False  # whether the last write failed (a full or unreachable file system)
        self._count = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat_forever, name="heartbeat", daemon=True)

    def start(self) -> "Heartbeat":
        self.write()
        self._thread.start()
        return self

    def write(self) -> None:
        self._count += 1
        record = Beat(rank=self.rank, host=os.uname().nodename, pid=os.getpid(), beat=self._count, step=self.step,
                      phase=self.phase, run=self.run)
        # Written in place, not renamed: a rename per beat per rank is a metadata storm on a parallel file system.
        # A reader that catches it half-written skips it (``Beat.read``).
        try:
            with open(self.path, "w") as handle:
                handle.write(json.dumps(dataclasses.asdict(record)))
            self.failing = False
        except OSError:  # a full disk must not kill this thread; the watchers then trust no file (``Watchman``)
            self.failing = True

    def stop(self, phase: str = EXITED) -> None:
        """The last beat (``exited``: this rank leaves on purpose, so its silence means nothing)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=2 * self.interval_s)
        self.phase = phase
        self.write()

    def _beat_forever(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.write()


@dataclasses.dataclass(frozen=True)
class Verdict:
    """Why the job must end: ``silent`` ranks (no beat for ``seconds``) or a ``stalled`` job (no step ended)."""

    kind: str  # "silent" or "stalled"
    ranks: tuple[int, ...]  # the suspects (none: a stall with every rank at the same step)
    hosts: tuple[str, ...]  # their nodes
    step: int  # the lowest step any rank reported
    seconds: float

    def describe(self) -> str:
        who = ", ".join(f"rank {r} on {h}" for r, h in zip(self.ranks, self.hosts))
        if self.kind == "silent":
            return f"{who} sent no heartbeat for {self.seconds:.0f} s (frozen, dead, or its node lost)"
        if who:
            return f"no step ended for {self.seconds:.0f} s; {who} stayed behind the others, at step {self.step}"
        return f"no step ended for {self.seconds:.0f} s, every rank at step {self.step} (a collective hangs)"


class Watch:
    """Reads the beats of ``ranks`` and judges them; ``check`` returns a ``Verdict`` or None."""

    def __init__(self, folder: Path, *, ranks: list[int], run: str, timeout_s: float,
                 clock: Callable[[], float] = time.monotonic):
        self.folder, self.ranks, self.run, self.timeout_s, self.clock = folder, ranks, run, timeout_s, clock
        began = clock()
        self._seen: dict[int, tuple[int, float]] = {r: (-1, began) for r in ranks}  # rank -> (beat, when it changed)
        self._moved: tuple[tuple[int, ...], float] = ((), began)  # (every rank's step, when that last changed)
        self.beats: dict[int, Beat] = {}

    def forget(self) -> None:
        """Start every clock again from now (after a time the files could not be trusted)."""
        now = self.clock()
        self._seen = {r: (beat, now) for r, (beat, _) in self._seen.items()}
        self._moved = (self._moved[0], now)

    def check(self) -> Verdict | None:
        now = self.clock()
        for rank in self.ranks:
            beat = Beat.read(beat_path(self.folder, rank))
            if beat is None or beat.run != self.run:
                continue
            self.beats[rank] = beat
            if beat.beat != self._seen[rank][0]:
                self._seen[rank] = (beat.beat, now)
        live = [r for r in self.ranks if not (r in self.beats and self.beats[r].phase == EXITED)]
        silent = [r for r in live if now - self._seen[r][1] > self.timeout_s]
        if silent:
            return Verdict("silent", tuple(silent), tuple(self._host(r) for r in silent), self._lowest_step(),
                           now - min(self._seen[r][1] for r in silent))
        steps = tuple(self.beats[r].step if r in self.beats else -1 for r in self.ranks)
        if steps != self._moved[0] or not all(r in self.beats and self.beats[r].phase == TRAINING
                                               for r in self.ranks):
            self._moved = (steps, now)  # a rank set up, saving or ending is not stalled: its clock starts again
            return None
        if now - self._moved[1] <= self.timeout_s:
            return None
        behind = [r for r in self.ranks if self.beats[r].step == min(steps)] if len(set(steps)) > 1 else []
        return Verdict("stalled", tuple(behind), tuple(self._host(r) for r in behind), min(steps),
                       now - self._moved[1])

    def _gone_from_here(self, rank: int) -> bool:
        """A rank of this node whose process is gone (no need to wait for its silence)."""
        beat = self.beats.get(rank)
        return beat is not None and beat.host == os.uname().nodename and not os.path.exists(f"/proc/{beat.pid}")

    def _host(self, rank: int) -> str:
        beat = self.beats.get(rank)
        return beat.host if beat is not None else "?"

    def _lowest_step(self) -> int:
        return min((b.step for b in self.beats.values()), default=0)

    def silent_now(self, *, within_s: float, own_rank: int = -1) -> list[int]:
        """The ranks that stopped beating: read the files until one of them has not changed for ``within_s``
        (two beats or more) while the others did, or ``within_s`` passed twice. What a rank that saw a peer fail
        asks before it leaves, to name the peer."""
        deadline = self.clock() + 2 * within_s
        while self.clock() < deadline:
            self.check()
            now = self.clock()
            left = [r for r in self.ranks if not (r in self.beats and self.beats[r].phase == EXITED)]
            quiet = [r for r in left if now - self._seen[r][1] > within_s or self._gone_from_here(r)]
            if quiet or left == [own_rank]:  # every other rank said it left: nobody to blame
                return quiet
            time.sleep(min(0.2, within_s / 4))
        return []


class Watchman:
    """One rank's part: its ``Heartbeat``, and a thread that watches (rank 0: every rank; the others: rank 0, which
    may be the one to freeze) and calls ``on_hang(verdict, beats)`` once, from that thread, on a hang."""

    def __init__(self, folder: Path, *, rank: int, world_size: int, run: str, timeout_s: float,
                 on_hang: Callable[[Verdict, dict[int, Beat]], None]):
        self.folder, self.rank, self.world_size, self.run, self.timeout_s = folder, rank, world_size, run, timeout_s
        self.interval_s = interval_for(timeout_s)
        self.heartbeat = Heartbeat(folder, rank=rank, run=run, interval_s=self.interval_s)
        self._on_hang = on_hang
        self._watching = threading.Event()

    def start(self) -> "Watchman":
        self.heartbeat.start()
        watch = Watch(self.folder, ranks=list(range(self.world_size)) if self.rank == 0 else [0], run=self.run,
                      timeout_s=self.timeout_s)
        self._watching.set()

        def watch_forever() -> None:
            while self._watching.is_set():
                time.sleep(self.interval_s)
                if self.heartbeat.failing:  # beats this rank cannot write, the others cannot either: their
                    watch.forget()  # silence says nothing until the file system takes writes again
                    continue
                verdict = watch.check() if self._watching.is_set() else None
                if verdict is not None:
                    self._on_hang(verdict, watch.beats)
                    return

        threading.Thread(target=watch_forever, name="hang-watch", daemon=True).start()
        return self

    def step(self, step: int) -> None:
        """A step ended: the beats carry it (the watchers judge stalls by it)."""
        self.heartbeat.step, self.heartbeat.phase = step, TRAINING

    def phase(self, phase: str) -> None:
        """What this rank does now: ``TRAINING`` between steps, ``BUSY`` in a long step of the library's own."""
        self.heartbeat.phase = phase

    @contextlib.contextmanager
    def busy(self) -> Iterator[None]:
        """A long step of the library's own inside training (a save's copy): no stall while it lasts."""
        previous, self.heartbeat.phase = self.heartbeat.phase, BUSY
        try:
            yield
        finally:
            self.heartbeat.phase = previous

    def stop(self) -> None:
        """This rank leaves on purpose: no more watching, and a last beat that says so."""
        self._watching.clear()
        self.heartbeat.stop(EXITED)

    @property
    def verdict_file(self) -> Path:
        """Created by the first watcher to find this run hung: the others (and a rank that wakes from a freeze as
        Slurm ends the job) leave the decision to it."""
        return self.folder / f"verdict-{self.run.replace('/', '-')}"

    def claim_verdict(self) -> bool:
        """Whether this rank is the one to act on the hang."""
        try:
            os.close(os.open(self.verdict_file, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            return False
        return True

    def suspects(self) -> list[str]:
        """After a peer's failure: the nodes of the ranks that stopped beating (died) rather than left."""
        watch = Watch(self.folder, ranks=list(range(self.world_size)), run=self.run, timeout_s=self.timeout_s)
        quiet = watch.silent_now(within_s=2 * self.interval_s + 0.5, own_rank=self.rank)
        return sorted({watch.beats[r].host for r in quiet if r in watch.beats})


def kill_ranks_here(beats: dict[int, Beat]) -> None:
    """SIGKILL the other ranks of this node (every rank of a local run), a frozen one included."""
    here = os.uname().nodename
    for beat in beats.values():
        if beat.host == here and beat.pid != os.getpid():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(beat.pid, signal.SIGKILL)
