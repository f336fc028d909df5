"""The run directory: the one module that knows its file names, writes its files atomically and reads
its JSON-lines logs.

Layout of a run directory (``RunDir``)::

    summary.json      the final numbers, written once at the end (rank 0)
    metrics.jsonl     one record per log interval (rank 0)
    events.jsonl      what happened across requeues: one line per event, from any rank
    checkpoints/      step-N folders (``cluster.runtime.checkpoint``)
    logs/             the ranks' stdout and stderr (submitit)
    heartbeats/       one file per rank: its host, pid, step and a beat counter (``cluster.runtime.heartbeat``)
    tensorboard/      event files, when tensorboard is installed
    .lock             held by the live local run, and by a submission while it submits (``hold``)
    .claim            the Slurm job that trains here (``claim``): no other job may while it is queued or running

A sweep directory holds ``manifest.json`` and ``submissions.pkl`` (``cluster.sweep.manifest``), its
``logs/``, one run directory per member, and ``events.jsonl`` once a member has found a bad node. A member's
directory is made by its job when it starts; until then the manifest is its claim (``claimed_by``).
"""

import contextlib
import dataclasses
import fcntl
import functools
import json
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cluster.errors import RunDirectoryBusyError, SettingError, literal
from cluster.slurm import commands


@dataclasses.dataclass(frozen=True)
class RunDir:
    """Where one run keeps everything; each property is one of its files or folders."""

    path: Path

    @property
    def summary(self) -> Path:
        return self.path / "summary.json"

    @property
    def metrics(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def events(self) -> Path:
        return self.path / "events.jsonl"

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def logs(self) -> Path:
        return self.path / "logs"

    @property
    def heartbeats(self) -> Path:
        return self.path / "heartbeats"

    @property
    def tensorboard(self) -> Path:
        return self.path / "tensorboard"

    @property
    def lock(self) -> Path:
        return self.path / ".lock"

    @property
    def claim(self) -> Path:
        return self.path / ".claim"


def write_atomically(path: Path, data: bytes | str) -> None:
    """Write ``path`` whole: a reader sees the old file or the new one, never half of one."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    if isinstance(data, str):
        temporary.write_text(data)
    else:
        temporary.write_bytes(data)
    temporary.replace(path)


def write_json(path: Path, value: Any) -> None:
    """``value`` as indented JSON, written atomically."""
    write_atomically(path, json.dumps(value, indent=1) + "\n")


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Every record of a JSON-lines file, oldest first; a line cut short (a kill, a write in progress) is skipped."""
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            continue
    return records


def append_jsonl(path: Path, record: dict[str, Any]) -> None:
    """Append one record with a single ``write`` (``O_APPEND``): writers never interleave inside a line."""
    line = (json.dumps(record) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


class EventLog:
    """Appends to ``events.jsonl`` for one task of one job (``job`` and ``restart`` say which run it was).

    Events: started, layout, checkpointed, checkpoint-failed, signalled, requeued, resumed, failed, lost,
    stopped, finished, hung (a rank silent or no step ending: ``cluster.runtime.heartbeat``), excluded (bad
    nodes: ``cluster.bad_nodes``). The log outlives every allocation, so requeue budgets are counted from it.
    """

    def __init__(self, run_dir: Path, *, rank: int, job: str, restart: int):
        self.path = RunDir(run_dir).events
        self.rank, self.job, self.restart = rank, job, restart

    def record(self, event: str, **fields: Any) -> dict[str, Any]:
        entry = {"time": time.strftime("%Y-%m-%dT%H:%M:%S"), "event": event, "job": self.job,
                 "restart": self.restart, "rank": self.rank, **fields}
        append_jsonl(self.path, entry)
        return entry


def read_events(run_dir: Path) -> list[dict[str, Any]]:
    """Every event of a run directory, oldest first."""
    return read_jsonl(RunDir(run_dir).events)


def check_writable(run_dir: Path, *, setting: str = "run_dir", make: bool = True) -> None:
    """Fail early, with the path, when the run directory (or the sweep directory: ``setting``) cannot take
    files. ``make``: create it now; else (a sweep's member, made by its job when it starts) a directory that does
    not exist yet is checked by its nearest existing parent, once for all the members it holds."""
    try:
        if not make and not run_dir.exists():
            _probe_once(_nearest_existing(run_dir))
            return
        try:
            run_dir.mkdir(parents=True)  # a directory this process just made is its own: nothing to probe
        except FileExistsError:  # (one file less per member of a big sweep)
            _probe(run_dir)
    except OSError as error:
        noun = "sweep directory" if setting == "sweep_dir" else "run directory"
        raise SettingError(f"cannot write to the {noun} {literal(str(run_dir))} "
                           f"({literal(str(error.strerror or error))}); choose a writable one with {{k.{setting}}}=PATH"
                           ) from error


def _nearest_existing(path: Path) -> Path:
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _probe(directory: Path) -> None:
    if not directory.is_dir():
        raise NotADirectoryError(20, f"{directory} is not a directory")
    probe = directory / f".write-test.{os.getpid()}"
    probe.write_text("ok")
    probe.unlink()


_probe_once = functools.lru_cache(maxsize=16)(_probe)  # 10,000 members in one sweep directory: one probe


@contextlib.contextmanager
def hold(run_dir: Path) -> Iterator[None]:
    """Hold the run directory's lock for the block, or raise if another process holds it.

    The kernel releases the lock when its holder dies, so a killed run never leaves it taken.
    """
    handle = open(RunDir(run_dir).lock, "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise RunDirectoryBusyError(
            f"run directory {literal(str(run_dir))} is in use by {literal(holder)}; wait for it to end, "
            "or choose another {k.run_dir}"
        ) from None
    try:
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {os.uname().nodename}\n")
        handle.flush()
        yield
    finally:
        handle.close()


# What a refused command leaves in a directory before anything trained there: submitit's pickles, our lock and
# probe (a caller adds its own, as ``also``). A claim (a submitted job) is not among them.
_BEFORE_TRAINING = {"logs", ".lock", ".write-test"}


def remove_if_unused(run_dir: Path, *, also: tuple[str, ...] = ()) -> bool:
    """Remove a run directory in which nothing ever trained nor was submitted (a refused command's), that holds
    nothing else but ``also``; True if it is gone."""
    if not run_dir.is_dir() or any(child.name not in _BEFORE_TRAINING | set(also) for child in run_dir.iterdir()):
        return False
    shutil.rmtree(run_dir, ignore_errors=True)
    return not run_dir.exists()


def claim(run_dir: Path, job_id: str) -> None:
    """Record that Slurm job ``job_id`` (``ARRAY_TASK`` for an array task) trains in ``run_dir``."""
    run_dir.mkdir(parents=True, exist_ok=True)
    write_atomically(RunDir(run_dir).claim, job_id + "\n")


SWEEP_MANIFEST = "manifest.json"  # in a sweep directory (cluster.sweep.manifest)


def claimed_by(run_dir: Path, sweeps: dict[str, dict[str, str]] | None = None) -> str:
    """The Slurm job that claimed ``run_dir`` ("" when none did): the job that wrote its ``.claim`` as it started,
    else, for a sweep member not started yet, the job its sweep's manifest gives it. ``sweeps``: manifests
    already read (a check of many members reads their manifest once)."""
    try:
        return RunDir(run_dir).claim.read_text().strip()
    except (FileNotFoundError, NotADirectoryError):
        pass
    path = os.path.abspath(run_dir)  # as the manifest has it; resolve() cost 35 us a member
    sweep_dir = os.path.dirname(path)
    if sweeps is None:
        sweeps = {}
    if sweep_dir not in sweeps:
        sweeps[sweep_dir] = _sweep_claims(Path(sweep_dir) / SWEEP_MANIFEST)
    return sweeps[sweep_dir].get(path, "")


def _sweep_claims(manifest: Path) -> dict[str, str]:
    """{member's run directory: its Slurm job} of a sweep on Slurm ({} for none, or a local sweep)."""
    try:
        data = json.loads(manifest.read_text())
    except (FileNotFoundError, NotADirectoryError, ValueError):
        return {}
    if data.get("kind") != "slurm":
        return {}
    return {m["run_dir"]: commands.slurm_id(m["job_id"], m["task_id"])
            for m in data.get("members", []) if m.get("job_id")}


def check_unclaimed(run_dirs: list[Path], *, allowed: str = "") -> None:
    """Refuse when a Slurm job other than ``allowed`` that claimed one of ``run_dirs`` is still queued or running:
    two jobs training into one directory corrupt its checkpoints. Slurm is asked only when a claim exists."""
    sweeps: dict[str, dict[str, str]] = {}
    claims = {run_dir: job for run_dir in run_dirs if (job := claimed_by(run_dir, sweeps)) and job != allowed}
    if not claims:
        return
    states, _ = commands.job_states(sorted(set(claims.values())))
    live = [(run_dir, job, states[job][0]) for run_dir, job in claims.items()
            if states.get(job, ("",))[0] in commands.ACTIVE]
    if live:
        run_dir, job, state = live[0]
        more = f" (and {len(live) - 1} more)" if len(live) > 1 else ""
        raise RunDirectoryBusyError(
            f"run directory {literal(str(run_dir))}{more} belongs to Slurm job {literal(job)}, which is {state}; "
            f"wait for it to end, cancel it (scancel {literal(job)}), or choose another {{k.run_dir}}")
