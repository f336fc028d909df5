"""Start a task function as N ranks on this machine (submitit's LocalExecutor), and wait for a job.

A task function never knows what started it: it reads its place with ``cluster.environment``.
"""

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import submitit

from cluster.local.interrupt import CtrlC, Interrupted, ignoring_sigint
from cluster.local.watchdog import exit_when_gone
from cluster.submitit_compat import failure_text

R = TypeVar("R")
POLL_S = 0.1  # how soon the launcher sees its ranks end (a poll is one waitpid and a metrics read)


class TaskFailedError(RuntimeError):
    """A rank of a launched job raised or died; the message holds its last lines and its log."""


def launch_local(
    fn: Callable[..., R],
    *args: Any,
    tasks: int,
    timeout_min: float,
    log_dir: Path,
    signal_lead_s: int = 30,  # the tasks get USR2 this long before timeout_min, and may ask to be restarted
    devices: tuple[str, ...] = (),  # each task's CUDA_VISIBLE_DEVICES ("": no GPU); none given: no GPU for any
    on_poll: Callable[[], None] = lambda: None,
) -> R:
    """Run ``fn(*args)`` in ``tasks`` processes on this machine and wait; ``on_poll`` runs while waiting.

    Each rank stops itself when this process is gone (see ``cluster.local.watchdog``), so killing the
    launcher kills the run, as it does with torchrun. Each sees the GPU ``devices`` gives it, and only
    that one (submitit would show every task the first N GPUs, whatever the user's own mask). Ctrl-C stops
    the ranks at a step boundary, saved, then raises ``Interrupted`` (``cluster.local.interrupt``).
    """
    executor = submitit.LocalExecutor(folder=log_dir)
    executor.update_parameters(tasks_per_node=tasks, nodes=1, timeout_min=timeout_min, signal_delay_s=signal_lead_s)
    with ignoring_sigint():  # the controller (and the ranks until they catch it) ignore Ctrl-C
        job = executor.submit(_watched, os.getpid(), tuple(devices) or ("",) * tasks, fn, *args)
    ctrl_c = CtrlC().install()

    def poll() -> None:
        ctrl_c.poll()
        on_poll()

    try:
        _wait_until_done(job, on_poll=poll)
        if ctrl_c.count:  # the ranks stopped and left no result (submitit would wait 30 s for one)
            raise Interrupted(at_once=False)
        return _rank0_result(job)
    finally:
        ctrl_c.uninstall()
        if not job.done():
            job.cancel(check=False)


def wait_for(job: "submitit.Job[Any]", *, on_poll: Callable[[], None] = lambda: None) -> Any:
    """Wait until ``job`` ends, calling ``on_poll`` meanwhile; rank 0's result, or TaskFailedError."""
    _wait_until_done(job, on_poll=on_poll)
    return _rank0_result(job)


def _wait_until_done(job: "submitit.Job[Any]", *, on_poll: Callable[[], None]) -> None:
    while not job.done():
        on_poll()
        time.sleep(POLL_S)
    on_poll()


def _watched(launcher_pid: int, devices: tuple[str, ...], fn: Callable[..., R], *args: Any) -> R:
    exit_when_gone(launcher_pid)
    # Before anything initialises CUDA (torch reads the mask once, at its first CUDA call).
    os.environ["CUDA_VISIBLE_DEVICES"] = devices[int(os.environ["SUBMITIT_LOCAL_LOCALID"])]
    return fn(*args)


def _rank0_result(job: "submitit.Job[Any]") -> Any:
    """Rank 0's return value, or every failed rank's last error line (one rank's crash often
    shows on the others as a closed connection, so the cause may be on any of them)."""
    failures: dict[str, list[int]] = {}  # last line -> the ranks that ended with it
    logs = {}
    for index in range(job.num_tasks):
        task = job.task(index)
        error = task.exception()
        if error is not None:
            text = failure_text(error)
            failures.setdefault(text.splitlines()[-1] if text else repr(error), []).append(index)
            logs[index] = task.paths.stderr
    if failures:
        raise TaskFailedError("training failed on " + "; ".join(
            f"rank{'s' * (len(ranks) > 1)} {', '.join(map(str, ranks))}: {last} (log: {logs[ranks[0]]})"
            for last, ranks in failures.items()))
    return job.task(0).result()
