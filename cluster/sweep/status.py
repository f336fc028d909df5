"""Where every member of a sweep stands: Slurm's state (``sacct``, else ``squeue``; for a ``cluster=local``
sweep, its queue's) plus its run directory.

``sacct`` knows every job that ever ran, while the accounting daemon is up. Without it, ``squeue`` still
knows the jobs that are pending or running, and a member that has left the queue is read from its run
directory: a summary means COMPLETED, a final ``failed`` event FAILED, a ``cancelled`` stop CANCELLED.
"""

import collections
import dataclasses
import os
import time
from pathlib import Path
from typing import Any

from cluster.bad_nodes import EVENT as bad_nodes_event
from cluster.requeue import ENDED
from cluster.rundir import RunDir, read_events, read_jsonl
from cluster.slurm.commands import ACTIVE, ENDED_BADLY, job_states
from cluster.sweep.local_queue import SOURCE as LOCAL_SOURCE
from cluster.sweep.local_queue import local_states, member_log
from cluster.sweep.manifest import Manifest, Member, find_manifest

# python -m cluster's exit codes (and hydra.launcher.wait's)
ALL_DONE, SOME_FAILED, USAGE, STILL_RUNNING = 0, 1, 2, 3


@dataclasses.dataclass
class MemberStatus:
    member: Member
    state: str  # Slurm's state (COMPLETED, RUNNING, FAILED, ...) or UNKNOWN
    restarts: int  # how often the member's job started again (requeues, retries)
    step: int  # last logged optimizer step
    loss: float | None  # loss at that step
    elapsed: str  # run time as Slurm tells it ("" when unknown)
    error: str  # the end of the member's error when it failed
    ranks: list[int] = dataclasses.field(default_factory=list)  # world size of each start that changed it, in order
    hangs: list[str] = dataclasses.field(default_factory=list)  # "step N: who was silent" for each hang, in order
    bad_nodes: list[str] = dataclasses.field(default_factory=list)  # nodes its failures implicated: kept out
    val_loss: float | None = None  # the loss on the validation data at its last evaluation

    def as_dict(self) -> dict[str, Any]:
        return {"member": self.member.index, "overrides": self.member.overrides, "state": self.state,
                "restarts": self.restarts, "step": self.step, "steps": self.member.steps, "loss": self.loss,
                "elapsed": self.elapsed, "error": self.error, "job": self.member.slurm_id, "ranks": self.ranks,
                "hangs": self.hangs, "bad_nodes": self.bad_nodes, "val_loss": self.val_loss,
                "run_dir": self.member.run_dir}


def from_run_dir(run_dir: Path, events: list[dict[str, Any]] | None = None) -> str:
    """A member's state told by its run directory alone (for one that has left the queue; ``events``: its events,
    when already read)."""
    if RunDir(run_dir).summary.is_file():
        return "COMPLETED"
    events = read_events(run_dir) if events is None else events
    ending = [e for e in events if e["event"] in ("failed", "stopped", "finished", "started")]
    if ending and ending[-1]["event"] == "failed":
        return "FAILED"
    if ending and ending[-1]["event"] == "stopped" and ending[-1].get("cause") == "cancelled":
        return "CANCELLED"
    return "UNKNOWN"


def in_pack(allocation: str, run_dir: Path, events: list[dict[str, Any]], submitted_at: str) -> str:
    """A packed member's state: its allocation's (``allocation``, "" when Slurm does not know it) tells only
    whether the pack runs; the member's own run directory tells how far the member got in it."""
    own = from_run_dir(run_dir, events)
    if own in ("COMPLETED", "FAILED") or not allocation:
        return own
    if allocation not in ACTIVE:  # the allocation ended (cancelled, timed out...) before this member did
        return allocation if allocation in ENDED_BADLY else own
    if allocation != "RUNNING":
        return allocation  # PENDING, REQUEUED...: the whole pack waits
    # Running: the pack's member in training is the one started since the submission whose run has not ended.
    current = [e for e in events if e.get("time", "") >= submitted_at and (e["event"] == "started" or
                                                                           e["event"] in ENDED)]
    return "RUNNING" if current and current[-1]["event"] == "started" else "PENDING"


def member_status(member: Member, slurm: dict[str, tuple[str, str]], *, packed: bool = False,
                  started: bool = True) -> MemberStatus:
    """``started``: false when the member's run directory does not exist (its job has not started): nothing to
    read there (10,000 members of a fresh sweep, 20,000 files not opened)."""
    run_dir = Path(member.run_dir)
    state, elapsed = slurm.get(member.slurm_id, ("", ""))
    if not started:
        return MemberStatus(member, state or "UNKNOWN", len(member.attempts), 0, None, elapsed, "")
    events = read_events(run_dir)
    if packed:
        state = in_pack(state, run_dir, events, member.submitted_at)
    elif not state:
        state = from_run_dir(run_dir, events)
    restarts = max([e.get("restart", 0) for e in events if e["event"] == "started"], default=0) + len(member.attempts)
    step, loss, val_loss = _last_metrics(run_dir)
    # Only since its latest submission: an earlier attempt's error is not this one's (ISO times compare as text).
    failures = [e for e in events if e["event"] == "failed" and (e.get("error") or e.get("reason"))
                and e.get("time", "") >= member.submitted_at]
    error = ""
    if state in ENDED_BADLY and failures:
        error = (failures[-1].get("error") or failures[-1]["reason"]).strip().splitlines()[-1]
    hangs = [f"step {e.get('step')}: {e.get('reason', '')}" for e in events if e["event"] == "hung"]
    bad_nodes = sorted({node for e in events if e["event"] == bad_nodes_event for node in e.get("nodes", [])})
    return MemberStatus(member, state, restarts, step, loss, elapsed, error, world_sizes(events), hangs, bad_nodes,
                        val_loss=val_loss)


def world_sizes(events: list[dict[str, Any]]) -> list[int]:
    """The run's number of ranks as it changed from start to start (an elastic job: ``[8, 4]``)."""
    sizes: list[int] = []
    for event in events:
        if event["event"] == "started" and event.get("world_size") and event["world_size"] not in sizes[-1:]:
            sizes.append(int(event["world_size"]))
    return sizes


def read_curve(run_dir: Path) -> tuple[list[int], list[float]]:
    """(steps, losses) of a run's metrics.jsonl; a resumed run's repeated steps keep their last value, and a
    line still being written is skipped."""
    return _curve(read_jsonl(RunDir(run_dir).metrics))


def _curve(records: list[dict[str, Any]]) -> tuple[list[int], list[float]]:
    by_step = {record["step"]: record["loss"] for record in records}
    steps = sorted(by_step)
    return steps, [by_step[s] for s in steps]


def _last_metrics(run_dir: Path) -> tuple[int, float | None, float | None]:
    """The last step, its loss, and the validation loss of the last evaluation (None before its first): one read of
    metrics.jsonl (a status of many members reads many)."""
    records = read_jsonl(RunDir(run_dir).metrics)
    steps, losses = _curve(records)
    evaluated = [record["val_loss"] for record in records if "val_loss" in record]
    return (steps[-1] if steps else 0, losses[-1] if steps else None, evaluated[-1] if evaluated else None)


def sweep_status(manifest: Manifest) -> tuple[list[MemberStatus], str]:
    """Every member's status, and the source of the states (Slurm's tools, or the local queue)."""
    if manifest.kind == "local":
        slurm, source = local_states(manifest), LOCAL_SOURCE
    else:
        slurm, source = job_states([m.job_id for m in manifest.members if m.job_id])
    listed: dict[str, set[str]] = {}  # a directory -> what it holds: one listing for the members it holds

    def started(run_dir: str) -> bool:
        parent, name = os.path.split(run_dir)
        if parent not in listed:
            listed[parent] = set(os.listdir(parent)) if os.path.isdir(parent) else set()
        return name in listed[parent]

    return [member_status(member, slurm, packed=manifest.pack > 1, started=started(member.run_dir))
            for member in manifest.members], source


def varying_overrides(members: list[Member]) -> dict[int, str]:
    """Each member's overrides without those every member shares (the sweep's fixed part): its label."""
    shared = set.intersection(*(set(m.overrides) for m in members)) if len(members) > 1 else set()
    return {m.index: " ".join(o for o in m.overrides if o not in shared) for m in members}


def exit_code(statuses: list[MemberStatus]) -> int:
    states = {s.state for s in statuses}
    if states & ACTIVE:
        return STILL_RUNNING
    return ALL_DONE if states == {"COMPLETED"} else SOME_FAILED


def member_logs(manifest: Manifest, member: Member, rank: int) -> list[Path]:
    """Where a member's rank writes: submitit's files in the sweep's logs/ on Slurm. A local member's ranks
    write under its run directory (its newest attempt), after what the member's own process printed."""
    if manifest.kind != "local":
        return [manifest.log_dir / f"{member.slurm_id}_{rank}_log.{kind}" for kind in ("out", "err")]
    own = [member_log(Path(manifest.sweep_dir), member.index)] if rank == 0 else []
    logs = RunDir(Path(member.run_dir)).logs
    newest = sorted(logs.glob(f"*_{rank}_log.out"), key=lambda log: log.stat().st_mtime)
    name = newest[-1].name.removesuffix(".out") if newest else f"JOB_{rank}_log"
    return own + [logs / f"{name}.{kind}" for kind in ("out", "err")]


def follow(sweep_dir: Path) -> int:
    """Follow a sweep until no member is queued; prints each change of the counts. The status exit code."""
    manifest = find_manifest(sweep_dir)
    poll_s = 1.0 if manifest.kind == "local" else 10.0  # Slurm's tools are not to be asked every second
    last = None
    while True:
        statuses, _ = sweep_status(manifest)
        counts = dict(sorted(collections.Counter(s.state for s in statuses).items()))
        if counts != last:
            print(", ".join(f"{n} {state}" for state, n in counts.items()), flush=True)
            last = counts
        code = exit_code(statuses)
        if code != STILL_RUNNING:
            return code
        time.sleep(poll_s)
