"""Where every member of a sweep stands: Slurm's state (``sacct``, else ``squeue``; for a ``cluster=local``
sweep, its queue's) plus its run directory.

``sacct`` knows every job that ever ran, while the accounting daemon is up. Without it, ``squeue`` still
knows the jobs that are pending or running, and a member that has left the queue is read from its run
directory: a summary means COMPLETED, a final ``failed`` event FAILED, a ``cancelled`` stop CANCELLED.
"""

import dataclasses
import json
import re
import subprocess
from pathlib import Path
from typing import Any

from cluster.events import read_events
from cluster.local_queue import SOURCE as LOCAL_SOURCE
from cluster.local_queue import local_states
from cluster.sweep import Manifest, Member

ACTIVE = {"PENDING", "RUNNING", "REQUEUED", "COMPLETING", "CONFIGURING", "RESIZING", "SUSPENDED", "REQUEUE_HOLD",
          "REQUEUE_FED", "STAGE_OUT", "SIGNALING"}
ENDED_BADLY = {"FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE", "PREEMPTED"}
TIMEOUT_S = 30
_ARRAY_RANGE = re.compile(r"^(\d+)_\[([^\]]+)\]$")  # sacct's pending tasks of an array: 123_[4-11%4]


@dataclasses.dataclass
class MemberStatus:
    member: Member
    state: str  # Slurm's state (COMPLETED, RUNNING, FAILED, ...) or UNKNOWN
    restarts: int  # how often the member's job started again (requeues, retries)
    step: int  # last logged optimizer step
    loss: float | None  # loss at that step
    elapsed: str  # run time as Slurm tells it ("" when unknown)
    error: str  # the end of the member's error when it failed

    def as_dict(self) -> dict[str, Any]:
        return {"member": self.member.index, "overrides": self.member.overrides, "state": self.state,
                "restarts": self.restarts, "step": self.step, "steps": self.member.steps, "loss": self.loss,
                "elapsed": self.elapsed, "error": self.error, "job": self.member.slurm_id,
                "run_dir": self.member.run_dir}


def expand_array_ids(job_id: str) -> list[str]:
    """``123_[0-2,5%4]`` -> ``123_0 123_1 123_2 123_5``; any other id unchanged."""
    match = _ARRAY_RANGE.match(job_id)
    if not match:
        return [job_id]
    array, spec = match.group(1), match.group(2).split("%")[0]
    tasks = []
    for part in spec.split(","):
        first, _, last = part.partition("-")
        tasks.extend(range(int(first), int(last or first) + 1))
    return [f"{array}_{task}" for task in tasks]


def parse_states(output: str) -> dict[str, tuple[str, str]]:
    """``JOBID|STATE|ELAPSED`` lines (sacct -P, squeue -o) -> {job id: (state, elapsed)}."""
    states = {}
    for line in output.splitlines():
        parts = line.strip().split("|")
        if len(parts) < 3 or not parts[0]:
            continue
        state = parts[1].split()[0] if parts[1].strip() else "UNKNOWN"  # "CANCELLED by 0"
        for job_id in expand_array_ids(parts[0]):
            states[job_id] = (state, parts[2])
    return states


def slurm_states(job_ids: list[str]) -> tuple[dict[str, tuple[str, str]], str]:
    """States of these jobs and where they came from: ``sacct``, or ``squeue`` when accounting is down.

    ``squeue`` also fills in what ``sacct`` does not list yet (the database lags a fresh submission).
    """
    accounting = _run(["sacct", "-n", "-P", "-X", "-j", ",".join(sorted(set(job_ids))),
                       "--format=JobID,State,Elapsed"])
    queued = parse_states(_run(["squeue", "-h", "-r", "--me", "-o", "%i|%T|%M"]) or "")
    if accounting is None:
        return queued, "squeue and the run directories (accounting unavailable)"
    return {**queued, **parse_states(accounting)}, "sacct"


def _run(command: list[str]) -> str | None:
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT_S)
    except (FileNotFoundError, subprocess.TimeoutExpired):
        return None
    return done.stdout if done.returncode == 0 else None


def from_run_dir(run_dir: Path) -> str:
    """A member's state told by its run directory alone (for one that has left the queue)."""
    if (run_dir / "summary.json").is_file():
        return "COMPLETED"
    ending = [e for e in read_events(run_dir) if e["event"] in ("failed", "stopped", "finished", "started")]
    if ending and ending[-1]["event"] == "failed":
        return "FAILED"
    if ending and ending[-1]["event"] == "stopped" and ending[-1].get("cause") == "cancelled":
        return "CANCELLED"
    return "UNKNOWN"


def member_status(member: Member, slurm: dict[str, tuple[str, str]]) -> MemberStatus:
    run_dir = Path(member.run_dir)
    state, elapsed = slurm.get(member.slurm_id, ("", ""))
    if not state:
        state = from_run_dir(run_dir)
    events = read_events(run_dir)
    restarts = max([e.get("restart", 0) for e in events if e["event"] == "started"], default=0) + len(member.attempts)
    step, loss = _last_metrics(run_dir)
    # Only since its latest submission: an earlier attempt's error is not this one's (ISO times compare as text).
    failures = [e for e in events if e["event"] == "failed" and (e.get("error") or e.get("reason"))
                and e.get("time", "") >= member.submitted_at]
    error = ""
    if state in ENDED_BADLY and failures:
        error = (failures[-1].get("error") or failures[-1]["reason"]).strip().splitlines()[-1]
    return MemberStatus(member, state, restarts, step, loss, elapsed, error)


def read_curve(run_dir: Path) -> tuple[list[int], list[float]]:
    """(steps, losses) of a run's metrics.jsonl; a resumed run's repeated steps keep their last value, and a
    line still being written is skipped."""
    by_step: dict[int, float] = {}
    path = run_dir / "metrics.jsonl"
    for line in path.read_text().splitlines() if path.is_file() else []:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        by_step[record["step"]] = record["loss"]
    steps = sorted(by_step)
    return steps, [by_step[s] for s in steps]


def _last_metrics(run_dir: Path) -> tuple[int, float | None]:
    steps, losses = read_curve(run_dir)
    return (steps[-1], losses[-1]) if steps else (0, None)


def sweep_status(manifest: Manifest) -> tuple[list[MemberStatus], str]:
    """Every member's status, and the source of the states (Slurm's tools, or the local queue)."""
    if manifest.launcher == "local":
        slurm, source = local_states(manifest), LOCAL_SOURCE
    else:
        slurm, source = slurm_states([m.job_id for m in manifest.members if m.job_id])
    return [member_status(member, slurm) for member in manifest.members], source
