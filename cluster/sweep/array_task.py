"""What a sweep's array task runs: its member, or its pack of members one after another, read from the sweep's
``submissions.pkl``.

The array's batch script runs ``python -m cluster.slurm.task_runner --sweep DIR --members SPANS [--pack N]`` on
every rank. ``SPANS`` lists the array's members in task order (``0-999``; a retry's ``3,17,250-260``); task T
runs members ``SPANS[T*N : (T+1)*N]`` (N = ``--pack``, 1 by default). Nothing per member is written at
submission: the one pickle holds every member's function and arguments.

A pack's members share the allocation, not their fate: each trains in its own run directory with its own
checkpoints, requeue budgets and events. A stop (preemption, time limit, a retried failure) ends the task
for the whole pack and Slurm brings the allocation back; the members it finished in earlier runs of this
job are not run again, the interrupted one resumes from its checkpoint, the rest follow. A member that
fails for good is recorded in its run directory and the pack goes on to the next (and does not run it again).
"""

import contextlib
import os
import sys
import traceback
from collections.abc import Iterator
from pathlib import Path

from cluster.environment import derive_master_port
from cluster.requeue import JobEnd
from cluster.rundir import read_events
from cluster.sweep.manifest import SUBMISSIONS, load_submissions


def spans(numbers: list[int]) -> str:
    """``[0, 1, 2, 5, 7, 8]`` -> ``0-2,5,7-8``: an array's members in its script (read back by ``parse_spans``)."""
    runs: list[list[int]] = []
    for number in numbers:
        if runs and number == runs[-1][-1] + 1:
            runs[-1].append(number)
        else:
            runs.append([number])
    return ",".join(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]) for run in runs)


def parse_spans(text: str) -> list[int]:
    """``0-2,5,7-8`` -> ``[0, 1, 2, 5, 7, 8]`` (what ``spans`` writes)."""
    numbers: list[int] = []
    for part in text.split(","):
        first, _, last = part.partition("-")
        numbers.extend(range(int(first), int(last or first) + 1))
    return numbers


def members_of_task(members: list[int], task: int, pack: int) -> list[int]:
    """The members array task ``task`` runs, in order."""
    return members[task * pack:(task + 1) * pack]


def ended_here(run_dir: Path, job: str) -> str:
    """How the member ended in an earlier run of this very job ("finished", "failed"), or "" when it did not."""
    for event in read_events(run_dir):
        if event.get("job") == job and (event.get("event") == "finished" or
                                        (event.get("event") == "failed" and event.get("kind") == "final")):
            return str(event["event"])
    return ""


@contextlib.contextmanager
def own_port(key: str) -> Iterator[None]:
    """``MASTER_PORT`` for one member of a pack (every rank derives it alike from ``key``), and back as it was: each
    member joins a process group of its own, and a port of its own spares it the previous member's socket, which
    the kernel may still hold."""
    before = os.environ.get("MASTER_PORT")
    os.environ["MASTER_PORT"] = str(derive_master_port(key))
    try:
        yield
    finally:
        if before is None:
            del os.environ["MASTER_PORT"]
        else:
            os.environ["MASTER_PORT"] = before


def run(sweep_dir: Path, members: list[int], *, pack: int = 1) -> int:
    """Run this array task's members (every rank calls it alike); the task's exit code."""
    task = int(os.environ["SLURM_ARRAY_TASK_ID"])
    job = os.environ.get("SLURM_JOB_ID", "")
    mine = members_of_task(members, task, pack)
    submissions = load_submissions(sweep_dir / SUBMISSIONS)
    failed = []
    for index in mine:
        submission = submissions[index]
        fn, args = submission["fn"], submission["args"]
        if pack == 1:
            fn(*args)  # as a job of its own: its failure is the task's
            return 0
        run_dir = Path(submission["run_dir"])
        if ended := ended_here(run_dir, job):
            print(f"member {index}: {ended} in an earlier run of this allocation; not run again", flush=True)
            continue
        print(f"member {index} of the pack {mine[0]}..{mine[-1]}: {run_dir}", flush=True)
        try:
            with own_port(f"{job}-{index}"):
                fn(*args)
        except JobEnd:
            raise  # the allocation stops here (a requeue or a stop): the members left wait for it to come back
        except Exception:  # recorded in its run directory by the runtime; the pack goes on
            traceback.print_exc()
            print(f"member {index} failed; the pack goes on", file=sys.stderr, flush=True)
            failed.append(index)
    if failed:
        print(f"member(s) {', '.join(map(str, failed))} of this pack failed", file=sys.stderr, flush=True)
    return 1 if failed else 0
