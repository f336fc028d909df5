"""Why a job is being stopped, whether it may come back, and bringing it back.

The cause of a warning is read from Slurm (``scontrol show job``: state, restarts, preemption time,
end time), not guessed from elapsed time. Requeues are counted per cause in the run's events log,
which outlives every allocation; a job over a budget ends with that reason in the log and in its
Slurm comment. Ranks leave through ``JobEnd`` (a ``SystemExit``), so submitit writes no result for
a run that will come back, and the submitting side keeps waiting for the final one.
"""

import dataclasses
import datetime
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from cluster.environment import TaskEnvironment
from cluster.errors import SettingError
from cluster.slurm import commands

# submitit's local controller starts a job's tasks again when one exits with this code
# (submitit/local/local.py, LOCAL_REQUEUE_RETURN_CODE); Slurm jobs use it too, for one meaning.
EXIT_REQUEUE = 144
# A run stopped by Ctrl-C ends as a shell says a command killed by SIGINT did (128 + 2), saved and not requeued.
EXIT_INTERRUPTED = 130
# A rank silent this long (or no step ending on any rank) ends the job by default (``cluster.runtime.heartbeat``):
# longer than any step or save of the library's own, far shorter than a collective's timeout (600 s).
HANG_TIMEOUT_S = 300.0
# Slurm checks signal times on a coarse timer: a warning asked for N s before the end came here
# between N + 4 s and N - 18 s before it. A warning this close to the end is the time limit's.
SIGNAL_SLACK_S = 90

# cause of a stop or a restart -> the budget it spends ("requested": a command that exited with EXIT_REQUEUE)
BUDGET_OF = {"preemption": "preemption", "signal": "preemption", "time-limit": "time_limit",
             "failure": "failure", "hang": "failure", "health": "failure", "lost": "failure", "requested": "preemption"}


@dataclasses.dataclass(frozen=True)
class RequeueBudget:
    """How often a job may come back, per cause (-1: no limit)."""

    preemption: int = -1  # requeues after a preemption or a warning signal sent by hand
    time_limit: int = 3  # requeues after the job reached its time limit
    failure: int = 2  # retries after a crashed or hung rank, a lost node, or an exception seen once
    exclude_bad_nodes: bool = True  # keep the nodes a failure implicated (a hung or dead rank's) out of the next runs

    def __post_init__(self) -> None:
        for name in ("preemption", "time_limit", "failure"):
            if getattr(self, name) < -1:
                raise SettingError(f"{{k.{name}}}={getattr(self, name)} must be a count >= 0, or -1 for no limit")


class JobEnd(SystemExit):
    """Leave the task now; the code says whether the job comes back (``EXIT_REQUEUE``)."""


def spent(events: Sequence[Mapping[str, Any]], budget: str) -> int:
    """Requeues already charged to ``budget``: one per run that came back for one of its causes."""
    runs = {(e.get("job"), e.get("restart")) for e in events
            if e.get("event") in ("requeued", "lost") and BUDGET_OF.get(e.get("cause", "")) == budget}
    return len(runs)


def budget_left(budget: RequeueBudget, events: Sequence[Mapping[str, Any]], cause: str,
                spell: Callable[[str], str] = str) -> tuple[bool, str]:
    """Whether one more requeue for ``cause`` is allowed, and a phrase saying how many were used (the budget's
    setting named by ``spell``, ``cluster.errors``)."""
    name = BUDGET_OF[cause]
    limit, used = getattr(budget, name), spent(events, name)
    if limit < 0:
        return True, f"{name} requeue {used + 1} (no limit)"
    if used < limit:
        return True, f"{name} requeue {used + 1} of {limit}"
    return False, f"{name} budget of {limit} requeue(s) spent ({spell(name)}={limit})"


def signal_cause(env: TaskEnvironment, *, lead_s: float, fields: Mapping[str, str] | None = None,
                 now: datetime.datetime | None = None, started_s: float = 0.0,
                 local_timeout_s: float = 0.0) -> str:
    """Why the warning came: preemption, time-limit, requeued (from outside), cancelled, or signal (by hand).

    ``started_s`` and ``local_timeout_s`` (seconds since the task started, and the local executor's
    limit) stand in for Slurm's clock under the local executor.
    """
    if env.started_by != "slurm":
        if local_timeout_s and local_timeout_s - started_s <= lead_s + 5:
            return "time-limit"
        return "signal"
    fields = commands.job_fields(commands.own_job_id()) if fields is None else fields
    if not fields:
        return "signal"
    # First: a preemption sets PreemptTime for this run (a requeue clears it), whatever state the job shows
    # by the time it is asked (a CI run once saw a preempted job's ranks take it for cancelled).
    if fields.get("PreemptTime", "None") not in ("None", "Unknown", ""):
        return "preemption"
    if fields.get("JobState") != "RUNNING":  # scancel or scontrol requeue: the job is completing already
        return "requeued" if int(fields.get("Restarts", "0")) > env.restart_count else "cancelled"
    now = now or datetime.datetime.now()
    try:
        left = (datetime.datetime.fromisoformat(fields["EndTime"]) - now).total_seconds()
    except (KeyError, ValueError):
        return "signal"
    return "time-limit" if left <= lead_s + SIGNAL_SLACK_S else "signal"


# What starts a job again when asked: Slurm (scontrol requeue), submitit's local controller (exit code).
REQUEUEABLE = ("slurm", "local")


def request_requeue(env: TaskEnvironment, *, exclude: Sequence[str] = ()) -> str:
    """Ask what started this job to start it again (on Slurm, without the ``exclude`` nodes); "" on success, else
    why it did not work.

    Under the local executor the exit code (``EXIT_REQUEUE``) is the request.
    """
    if env.started_by != "slurm":
        return ""
    return commands.requeue(commands.own_job_id(), exclude=exclude)


def note_on_job(env: TaskEnvironment, text: str) -> None:
    """Put ``text`` into the Slurm job's comment (``squeue -o %k``, ``sacct -o Comment``)."""
    if env.started_by == "slurm":
        commands.set_comment(commands.own_job_id(), f"clusterjobs: {text}")  # the events log has it too


def restart_number(env: TaskEnvironment, events: Sequence[Mapping[str, Any]]) -> int:
    """Which run of this job this is: Slurm counts its requeues; submitit's local controller does not."""
    if env.started_by == "slurm":
        return env.restart_count
    return len({e.get("restart") for e in events if e.get("event") == "started" and e.get("job") == env.job_id})


# Events that say how a run ended ("lost": a run's successor saying it for it).
ENDED = frozenset({"requeued", "finished", "failed", "cancelled", "lost", "stopped"})


def unexplained_end(events: Sequence[Mapping[str, Any]], job: str, restart: int) -> Mapping[str, Any] | None:
    """The previous run's last event when that run ended without saying why (a lost node, a SIGKILL)."""
    previous = [e for e in events if e.get("job") == job and e.get("restart") == restart - 1]
    if not previous:
        return None
    return None if any(e.get("event") in ENDED for e in previous) else previous[-1]
