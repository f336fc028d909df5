"""``cluster=local`` sweeps: members run on this machine a few at a time, from a queue that outlives the command.

The sweep command starts ``python -m cluster.sweep.local_queue SWEEP_DIR INDEX...`` in a session of its own
and returns: the prompt comes back, and a closed terminal does not stop the sweep. The queue starts
each member as a process of its own (``--member``), at most ``parallelism`` at once, in the
manifest's order, and gives each running member its share of the CPUs (its ranks size their thread
pools by what they may use). Every member's state is a small JSON file, ``queue/INDEX.json``:
PENDING, RUNNING, then COMPLETED, FAILED or CANCELLED, with its process id and times. ``python -m
cluster status|cancel|retry`` read and write those files; nothing else keeps state.
"""

import argparse
import collections
import contextlib
import dataclasses
import fcntl
import json
import os
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Iterator
from pathlib import Path

from cluster.local.watchdog import exit_when_gone, process_alive
from cluster.rundir import RunDir, write_atomically
from cluster.sweep.manifest import Manifest, Member

POLL_S = 0.5
ENDED = {"COMPLETED", "FAILED", "CANCELLED"}
SOURCE = "the local queue (queue/*.json)"


@dataclasses.dataclass
class QueueState:
    """Where one member stands in the local queue."""

    state: str  # PENDING, RUNNING, COMPLETED, FAILED or CANCELLED
    queue_pid: int  # the queue process that owns the member
    pid: int = 0  # the member's own process while it runs
    started_at: float = 0.0  # time.time() when it started (0: not yet)
    ended_at: float = 0.0  # time.time() when it ended (0: not yet)
    exit_code: int | None = None  # its process's exit status

    @property
    def elapsed(self) -> str:
        """Run time as Slurm writes it (HH:MM:SS), "" before the member starts."""
        if not self.started_at:
            return ""
        seconds = int((self.ended_at or time.time()) - self.started_at)
        return f"{seconds // 3600:02d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def state_path(sweep_dir: Path, index: int) -> Path:
    return sweep_dir / "queue" / f"{index}.json"


def member_log(sweep_dir: Path, index: int) -> Path:
    """What the member's own process printed (its ranks log under its run directory's logs/)."""
    return RunDir(sweep_dir).logs / f"local_{index}.log"


@contextlib.contextmanager
def state_lock(sweep_dir: Path) -> Iterator[None]:
    """Held while a state is read and changed: the queue and ``cancel`` both change them."""
    path = sweep_dir / "queue" / ".lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # released when the file closes
        yield


def read_state(sweep_dir: Path, index: int) -> QueueState | None:
    try:
        return QueueState(**json.loads(state_path(sweep_dir, index).read_text()))
    except FileNotFoundError:
        return None


def write_state(sweep_dir: Path, index: int, state: QueueState) -> None:
    path = state_path(sweep_dir, index)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, json.dumps(dataclasses.asdict(state)))


def local_states(manifest: Manifest) -> dict[str, tuple[str, str]]:
    """{member id: (state, elapsed)} as ``cluster.sweep.status`` takes them from Slurm.

    A member left PENDING or RUNNING by a queue that is gone (killed, the machine rebooted) is
    NODE_FAIL, as Slurm says of a job whose node died, unless it had finished: ``retry`` runs it again.
    """
    states = {}
    for member in manifest.members:
        state = read_state(Path(manifest.sweep_dir), member.index)
        if state is None:
            continue
        if state.state not in ENDED and not process_alive(state.queue_pid):
            state.state = "COMPLETED" if RunDir(Path(member.run_dir)).summary.is_file() else "NODE_FAIL"
        states[member.slurm_id] = (state.state, state.elapsed)
    return states


def cpu_shares(cpus: list[int], parallelism: int) -> list[list[int]]:
    """The CPUs each of ``parallelism`` slots may use: equal parts, or one CPU each, shared, when they are fewer."""
    if parallelism >= len(cpus):
        return [[cpus[slot % len(cpus)]] for slot in range(parallelism)]
    size, extra = divmod(len(cpus), parallelism)
    shares, start = [], 0
    for slot in range(parallelism):
        end = start + size + (slot < extra)
        shares.append(cpus[start:end])
        start = end
    return shares


def start_queue(manifest: Manifest, members: list[Member], *, parallelism: int) -> int:
    """Mark ``members`` PENDING and start a queue process for them; its pid. Returns at once."""
    sweep_dir = Path(manifest.sweep_dir)
    log = RunDir(sweep_dir).logs / "local_queue.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a") as output:
        queue = subprocess.Popen(
            [sys.executable, "-m", "cluster.sweep.local_queue", f"--parallelism={parallelism}", str(sweep_dir),
             *(str(m.index) for m in members)],
            stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT, start_new_session=True)
    for member in members:  # the queue starts nothing before every one of them names it
        member.submitted(f"local_{member.index}")
        write_state(sweep_dir, member.index, QueueState(state="PENDING", queue_pid=queue.pid))
    manifest.write()
    return queue.pid


def run_queue(sweep_dir: Path, indices: list[int], *, parallelism: int) -> None:
    """Run the members one slot at a time until each has ended or been cancelled."""
    _wait_until_handed_over(sweep_dir, indices)
    free = collections.deque(cpu_shares(sorted(os.sched_getaffinity(0)), parallelism))
    pending = collections.deque(indices)
    running: dict[int, tuple[subprocess.Popen, list[int]]] = {}
    while pending or running:
        for index, (process, cpus) in list(running.items()):
            if process.poll() is not None:
                _finish(sweep_dir, index, process.returncode)
                free.append(cpus)
                del running[index]
        while pending and free:
            index = pending.popleft()
            with state_lock(sweep_dir):  # a cancel now waits until the member is RUNNING, then stops it
                state = read_state(sweep_dir, index)
                # Not cancelled while it waited, and still this queue's: a retry may have handed it to another.
                if state is not None and state.state == "PENDING" and state.queue_pid == os.getpid():
                    running[index] = (_start_member(sweep_dir, index, free[0]), free.popleft())
        time.sleep(POLL_S)


def _wait_until_handed_over(sweep_dir: Path, indices: list[int], *, timeout_s: float = 60) -> None:
    """Until ``start_queue`` has marked every member PENDING for this queue (a retried member's old
    state names the queue before)."""
    deadline = time.monotonic() + timeout_s
    while not all((state := read_state(sweep_dir, i)) and state.queue_pid == os.getpid() for i in indices):
        if time.monotonic() > deadline:
            raise SystemExit(f"the members {indices} were never handed to this queue (pid {os.getpid()})")
        time.sleep(0.05)


def _start_member(sweep_dir: Path, index: int, cpus: list[int]) -> subprocess.Popen:
    log = member_log(sweep_dir, index)
    with open(log, "a") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "cluster.sweep.local_queue", str(sweep_dir), f"--member={index}"],
            stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT,
            preexec_fn=lambda: os.sched_setaffinity(0, cpus))  # inherited by its ranks
    write_state(sweep_dir, index, QueueState(state="RUNNING", queue_pid=os.getpid(), pid=process.pid,
                                             started_at=time.time()))
    return process


def _finish(sweep_dir: Path, index: int, exit_code: int) -> None:
    with state_lock(sweep_dir):
        state = read_state(sweep_dir, index)
        assert state is not None, f"member {index} has no queue state"  # written before it started
        if state.state != "CANCELLED":  # a cancel has the last word over the exit it caused
            state.state = "COMPLETED" if exit_code == 0 else "FAILED"
        state.ended_at, state.exit_code = time.time(), exit_code
        write_state(sweep_dir, index, state)


def cancel_members(manifest: Manifest, members: list[Member]) -> list[int]:
    """Cancel these members: pending ones never start, running ones are stopped. The indices cancelled."""
    sweep_dir, cancelled = Path(manifest.sweep_dir), []
    with state_lock(sweep_dir):
        for member in members:
            state = read_state(sweep_dir, member.index)
            if state is None or state.state in ENDED:
                continue
            was_running = state.state == "RUNNING"
            state.state = "CANCELLED"
            write_state(sweep_dir, member.index, state)
            if was_running:
                # Its ranks stop within a second when it is gone (cluster.local.watchdog); their last checkpoint stays.
                with contextlib.suppress(ProcessLookupError):  # it ended on its own meanwhile
                    os.kill(state.pid, signal.SIGTERM)
            cancelled.append(member.index)
    return cancelled


def run_member(sweep_dir: Path, index: int) -> int:
    """One member, as ``cluster=local`` runs it; the exit status the queue records."""
    exit_when_gone(os.getppid())  # a member that outlived its queue would run where no one records it
    manifest = Manifest.read(sweep_dir)
    member = next(m for m in manifest.members if m.index == index)
    submission = manifest.load_submission(member)
    print(f"member {index}: {' '.join(member.overrides)} on CPUs {sorted(os.sched_getaffinity(0))}", flush=True)
    try:
        submission["fn"](*submission["args"])
    except Exception:
        traceback.print_exc()
        return 1
    print(f"member {index}: done, run dir {member.run_dir}", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cluster.sweep.local_queue", description=__doc__.split("\n\n")[0])
    parser.add_argument("sweep_dir", type=Path)
    parser.add_argument("indices", type=int, nargs="*", help="members to run, in this order")
    parser.add_argument("--parallelism", type=int, default=1, help="members running at once")
    parser.add_argument("--member", type=int, help="run this one member here (what the queue starts)")
    args = parser.parse_args(argv)
    if args.member is not None:
        return run_member(args.sweep_dir, args.member)
    run_queue(args.sweep_dir, args.indices, parallelism=args.parallelism)
    return 0


if __name__ == "__main__":
    sys.exit(main())
