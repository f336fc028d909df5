"""What each rank of ``python -m cluster run`` runs: the user's command, with torchrun's variables, and what
its end means (finished, come back, or give up).

A command that uses the public API (``cluster.start``) decides for itself: its supervisor saves, requeues
within the budgets and writes the end of its run into ``events.jsonl``. A plain command says nothing; its
end is read from its exit: 0 finished, ``EXIT_REQUEUE`` (144) or death by the warning signal "come back"
(the preemption budget, or the time limit's), anything else a failure (the failure budget). Torch-free.
"""

import json
import os
import signal
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from cluster.environment import (
    RUN_DIR_VARIABLE,
    SETTINGS_VARIABLE,
    TaskEnvironment,
    detect_environment,
    variables_for,
)
from cluster.requeue import (
    ENDED,
    EXIT_REQUEUE,
    JobEnd,
    RequeueBudget,
    budget_left,
    note_on_job,
    request_requeue,
    signal_cause,
)
from cluster.rundir import EventLog, read_events

# Events by which a run says how it ended itself (a command using the API writes them); "lost" is its successor's.
ENDINGS = ENDED - {"lost"}


class CommandFailedError(RuntimeError):
    """The command ended badly, and the job does not come back."""


def torchrun_variables(env: TaskEnvironment) -> dict[str, str]:
    """The variables torchrun gives each process, so that ``init_process_group("env://")`` finds the job.

    Not ``TORCHELASTIC_RUN_ID``: with it, the command would take itself for torchrun's and not see Slurm.
    """
    read_back = variables_for("torchrun", env)
    del read_back["TORCHELASTIC_RUN_ID"]
    return {**read_back, "LOCAL_WORLD_SIZE": str(env.world_size // env.num_nodes), "ROLE_RANK": str(env.rank),
            "ROLE_WORLD_SIZE": str(env.world_size)}


def command_environment(env: TaskEnvironment, run_dir: Path, settings: Mapping[str, Any],
                        base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment the command runs in: ours, torchrun's variables, and what ``cluster.start`` reads."""
    return {**(os.environ if base is None else base), **torchrun_variables(env),
            RUN_DIR_VARIABLE: str(run_dir.resolve()), SETTINGS_VARIABLE: json.dumps(settings)}


def ending_of(run_dir: Path, job: str, *, restart: int | None = None, since: int = 0) -> str:
    """How the command said its run ended (an event of ``ENDINGS`` of job ``job``: of its run ``restart``, or
    among the events after the first ``since``), or "" when it said nothing."""
    said = [e.get("event") for e in read_events(run_dir)[since:] if e.get("job") == job
            and (restart is None or e.get("restart") == restart) and e.get("event") in ENDINGS]
    return str(said[-1]) if said else ""


def exit_cause(code: int, *, warning: str | None, warning_cause: str) -> str:
    """What a silent command's exit code means: "" it finished; a requeue cause; or "failure"."""
    if code == 0:
        return ""
    killed_by = signal.Signals(-code).name.removeprefix("SIG") if code < 0 else (
        signal.Signals(code - 128).name.removeprefix("SIG") if 128 < code < 128 + 65 and code != EXIT_REQUEUE
        else "")
    if warning and killed_by in (warning, "TERM"):
        return warning_cause  # it died of the warning it did not handle
    if code == EXIT_REQUEUE:
        return warning_cause if warning else "requested"
    return "failure"


def decide(run_dir: Path, env: TaskEnvironment, *, restart: int, code: int, cause: str, budget: RequeueBudget,
           spell: Any = str) -> int:
    """Record how a silent command's run ended and act on it (rank 0 only); the code the task ends with.

    Raises ``JobEnd`` when the job comes back (or another one decides), ``CommandFailedError`` when it ends badly.
    """
    log = EventLog(run_dir, rank=env.rank, job=env.job_id, restart=restart)
    if not cause:
        log.record("finished", exit_code=0)
        return 0
    if cause in ("requeued", "cancelled"):  # from outside (scontrol requeue, scancel): Slurm knows what comes next
        log.record(cause, exit_code=code, reason=f"{cause} from outside (scontrol/scancel)")
        raise JobEnd(0)
    allowed, phrase = budget_left(budget, read_events(run_dir), cause, spell)
    if allowed:
        problem = request_requeue(env)
        log.record("requeued", cause=cause, exit_code=code, budget=phrase, **({"problem": problem} if problem else {}))
        raise JobEnd(EXIT_REQUEUE)
    reason = f"the command exited with {code} ({cause}), and the {phrase}"
    log.record("failed", kind="final", exit_code=code, reason=reason)
    note_on_job(env, f"ended: {reason}"[:240])
    raise CommandFailedError(reason)


def run_command(command: Sequence[str], run_dir: str, settings: Mapping[str, Any]) -> dict[str, Any]:
    """One Slurm task of ``python -m cluster run``: run the command as this rank, then act on its end.

    The warning signal (and SIGTERM) is passed on to the command: Slurm signals the task it started, and
    (with some process trackers) not what that task started in turn.
    """
    from cluster import warning_signals

    env = detect_environment()
    folder = Path(run_dir)
    warning = str(settings.get("signal", "USR2"))
    received = sorted(warning_signals.EARLY, key=warning_signals.EARLY.__getitem__)  # while this task started
    child = subprocess.Popen(list(command), env=command_environment(env, folder, settings))

    def forward(number: int, frame: object) -> None:
        received.append(signal.Signals(number).name.removeprefix("SIG"))
        if child.poll() is None:
            child.send_signal(number)

    for name in dict.fromkeys((warning, "TERM")):
        signal.signal(getattr(signal, f"SIG{name}"), forward)
    code = child.wait()
    budget = RequeueBudget(**settings.get("requeue", {}))
    if ending_of(folder, env.job_id, restart=env.restart_count):  # the command used the API: it decided already
        if code:
            raise JobEnd(code)
        return {"exit_code": 0, "run_dir": str(folder)}
    if not env.is_main:
        if code:
            raise JobEnd(code if code > 0 else 128 - code)
        return {"exit_code": 0}
    first = received[0] if received else None
    warning_cause = signal_cause(env, lead_s=float(settings.get("signal_lead_s", 0))) if first else ""
    cause = exit_cause(code, warning=first, warning_cause=warning_cause)
    decide(folder, env, restart=env.restart_count, code=code, cause=cause, budget=budget)
    return {"exit_code": 0, "run_dir": str(folder)}
