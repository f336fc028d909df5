"""A sweep's record on disk: ``manifest.json`` in the sweep directory, one entry per member.

The manifest says, for every member, its overrides, its run directory and where it went in Slurm (array
job id and task id) with the time of submission; a retry moves the member to its new array task and
keeps the old one under ``attempts``. Each member's submission (function, arguments, resources, run
directory) is pickled beside it in ``submissions.pkl``: what its array task runs, and what
``python -m cluster retry`` resubmits as it was.
Both are written whole to a temporary file and renamed, so a reader never sees half of one.
"""

import dataclasses
import datetime
import json
import pickle
from pathlib import Path
from typing import Any

from cluster.rundir import SWEEP_MANIFEST, RunDir, claimed_by, write_atomically
from cluster.slurm import commands

MANIFEST = SWEEP_MANIFEST
SUBMISSIONS = "submissions.pkl"


class NotASweepError(ValueError):
    """A path given to the CLI holds neither a sweep (manifest.json) nor a run."""


@dataclasses.dataclass
class Member:
    """One member of a sweep: one job (an array task on Slurm)."""

    index: int  # member number, as in Hydra's job.num and the run directory's name
    overrides: list[str]  # the command-line overrides that make this member
    run_dir: str  # where its summary, metrics, events and checkpoints go
    steps: int  # optimizer steps it trains for (for progress)
    job_id: str = ""  # Slurm array job id ("" before submission; "local" for cluster=local)
    task_id: int = -1  # its task in that array (cluster=local: the member's index)
    submitted_at: str = ""  # ISO time of its (latest) submission
    attempts: list[dict[str, Any]] = dataclasses.field(default_factory=list)  # earlier submissions, oldest first

    @property
    def slurm_id(self) -> str:
        """``ARRAY_TASK`` (or a single job's id), the id squeue, sacct and scancel know this member by."""
        return commands.slurm_id(self.job_id, self.task_id)

    def submitted(self, slurm_id: str) -> None:
        """Record its new job: ``ARRAY_TASK``, or a plain job id (submitit submits an array of one as a job)."""
        if self.job_id:
            self.attempts.append({"job_id": self.job_id, "task_id": self.task_id, "submitted_at": self.submitted_at})
        job_id, _, task = slurm_id.partition("_")
        self.job_id, self.task_id, self.submitted_at = job_id, int(task) if task else -1, now()


@dataclasses.dataclass
class Manifest:
    """Everything a later command needs to find, watch, retry and collect a sweep."""

    sweep_dir: str  # absolute path of the sweep directory
    kind: str  # where its members run: slurm, local, or run (one Slurm run, read from its run directory)
    created_at: str  # ISO time the sweep was submitted
    members: list[Member]
    pack: int = 1  # members per allocation (array task), run one after another: hydra.launcher.pack

    @property
    def path(self) -> Path:
        return Path(self.sweep_dir) / MANIFEST

    @property
    def log_dir(self) -> Path:
        """submitit's folder: ``ARRAY_TASK_RANK_log.out/.err`` per member and rank (``JOB_RANK_...`` for a run)."""
        return RunDir(Path(self.sweep_dir)).logs

    @property
    def submissions_path(self) -> Path:
        return Path(self.sweep_dir) / SUBMISSIONS

    def save_submissions(self, submissions: list[tuple[Member, dict[str, Any]]]) -> None:
        """Record these members' submissions (with those already on record), before any is submitted: one file,
        not one per member (which on these disks cost ~2 ms a file, 20 s for 10,000 members), read by every
        array task (``cluster.sweep.array_task``). Members share what they have in common (their configs'
        unchanged parts are the same objects), and pickle keeps one copy of a shared object."""
        recorded = load_submissions(self.submissions_path) if self.submissions_path.is_file() else {}
        # With its run directory: a pack's task looks there for how each member ended (cluster.sweep.array_task).
        recorded.update({member.index: {**submission, "run_dir": member.run_dir} for member, submission in submissions})
        write_atomically(self.submissions_path, pickle.dumps(recorded, protocol=pickle.HIGHEST_PROTOCOL))

    def load_submission(self, member: Member) -> dict[str, Any]:
        return load_submissions(self.submissions_path)[member.index]

    def write(self) -> None:
        """The manifest as JSON, a line per member: json's C encoder (an ``indent`` takes its slow Python one:
        12 s for ten writes of 10,000 members), still readable."""
        head = {key: value for key, value in vars(self).items() if key != "members"}
        members = ",\n".join(json.dumps(vars(member)) for member in self.members)
        write_atomically(self.path, json.dumps(head)[:-1] + f', "members": [\n{members}\n]}}\n')

    @classmethod
    def read(cls, sweep_dir: Path) -> "Manifest":
        data = json.loads((sweep_dir / MANIFEST).read_text())
        if "launcher" in data:  # written before clusterjobs 0.2 named it "kind"
            data["kind"] = data.pop("launcher")
        data["members"] = [Member(**member) for member in data["members"]]
        return cls(**data)


def load_submissions(path: Path) -> dict[int, dict[str, Any]]:
    """{member index: its submission} of a sweep: our own file, written by the launcher (``save_submissions``)."""
    return pickle.loads(path.read_bytes())


def now() -> str:
    return datetime.datetime.now().isoformat(timespec="seconds")


def array_chunks(count: int, max_array_size: int) -> list[range]:
    """Member positions split into arrays Slurm accepts: task ids run 0 .. MaxArraySize - 1."""
    if max_array_size < 1:
        raise ValueError(f"MaxArraySize {max_array_size} leaves no room for an array task")
    return [range(start, min(start + max_array_size, count)) for start in range(0, count, max_array_size)]


def find_manifest(path: Path) -> Manifest:
    """The sweep at ``path`` (or the sweep a member's run directory belongs to)."""
    if not path.exists():
        raise NotASweepError(f"{path} does not exist; give the sweep directory that the sweep command printed "
                             "(it holds manifest.json)")
    for candidate in (path, path.parent):
        if (candidate / MANIFEST).is_file():
            return Manifest.read(candidate.resolve())
    logs = sorted(RunDir(path).logs.glob("*_0_log.out"), key=lambda log: log.stat().st_mtime)
    if logs:
        return _single_run(path.resolve(), job_id=logs[-1].name.split("_")[0])
    if job_id := claimed_by(path):  # submitted, not started yet: no log so far
        return _single_run(path.resolve(), job_id=job_id)
    raise NotASweepError(f"{path} is no sweep directory: it has no {MANIFEST}; give the directory that the sweep "
                         "command printed")


def _single_run(run_dir: Path, *, job_id: str) -> Manifest:
    """One ``cluster=slurm`` run seen as a sweep of one member (its newest job in ``logs/``)."""
    overrides_file = run_dir / ".hydra" / "overrides.yaml"  # Hydra's record: one "- key=value" per line
    overrides = [line[2:].strip() for line in overrides_file.read_text().splitlines()
                 if line.startswith("- ")] if overrides_file.is_file() else []
    member = Member(index=0, overrides=overrides, run_dir=str(run_dir), steps=0, job_id=job_id)
    return Manifest(sweep_dir=str(run_dir), kind="run", created_at="", members=[member])
