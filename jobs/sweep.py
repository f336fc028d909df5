"""Sweeps (``python -m jobs.train -m ...``): plan and check every member, then submit them all at once.

Every member becomes a ``JobPlan`` and passes the same checks as a single run (``jobs.checks``)
before anything is submitted; one bad member stops the sweep with its number and overrides named. On
Slurm, members with the same resources share a job array (split at the cluster's MaxArraySize), and the
command returns once ``sbatch`` has answered; with ``cluster=local`` a queue process runs them a few at
a time (``cluster.sweep.local_queue``). The manifest (``cluster.sweep.manifest``) records where each went.
"""

import dataclasses
import sys
from pathlib import Path

from cluster.by_name import ByName
from cluster.errors import ClusterError
from cluster.slurm.limits import check_against_cluster
from cluster.slurm.resources import SlurmResources
from cluster.sweep.arrays import submit_members
from cluster.sweep.local_queue import start_queue
from cluster.sweep.manifest import Manifest, Member, now
from jobs.checks import check_before_start
from jobs.plan import JobPlan
from jobs.settings import SweepSettings
from jobs.start import RUN_TASK
from jobs.user_errors import describe

RUN_LOCAL = ByName("jobs.start", "run_local")  # in the local queue's member process


@dataclasses.dataclass
class PlannedMember:
    member: Member
    plan: JobPlan


def check_members(members: list[PlannedMember]) -> None:
    """Every member's checks, all of them; one ValueError naming each member that fails, and why."""
    problems = []
    resources_seen: dict[SlurmResources, str] = {}
    for planned in members:
        try:
            check_before_start(planned.plan, Path(planned.member.run_dir))
            resources = planned.plan.slurm
            if resources is not None and resources not in resources_seen:
                resources_seen[resources] = check_against_cluster(resources).name
        except (ValueError, FileNotFoundError, PermissionError, ClusterError) as error:
            problems.append(f"member {planned.member.index} ({' '.join(planned.member.overrides) or 'no overrides'})"
                            f": {describe(error)}")
    if problems:
        raise ValueError(f"{len(problems)} of {len(members)} sweep member(s) would fail, nothing was submitted:\n  "
                         + "\n  ".join(problems))


def launch_sweep(members: list[PlannedMember], sweep_dir: Path, options: SweepSettings) -> Manifest:
    """Check all members, submit them (Slurm job arrays, or the local queue), write the manifest and say
    how to watch the sweep."""
    kind = sweep_kind(members)
    check_members(members)
    manifest = open_manifest(sweep_dir, kind, [p.member for p in members])
    task = RUN_TASK if kind == "slurm" else RUN_LOCAL
    submissions = [(p.member, {"fn": task, "args": (p.plan, Path(p.member.run_dir)), "resources": p.plan.slurm})
                   for p in members]
    if kind == "slurm":
        arrays = submit_members(manifest, submissions, parallelism=options.array_parallelism,
                                max_size=options.max_array_size)
        where = f"as {len(arrays)} job array(s): {', '.join(arrays)}"
    else:
        manifest.save_submissions(submissions)
        queue = start_queue(manifest, [p.member for p in members], parallelism=options.local_parallelism)
        where = f"to a local queue (pid {queue}, {options.local_parallelism} at a time)"
    print(f"submitted {len(members)} member(s) {where}\n"
          f"sweep dir: {manifest.sweep_dir}\n"
          f"watch:     python -m cluster status {manifest.sweep_dir}\n"
          f"results:   python -m cluster collect {manifest.sweep_dir}", file=sys.stdout, flush=True)
    return manifest


def sweep_kind(members: list[PlannedMember]) -> str:
    """slurm or local: where every member of the sweep goes."""
    kinds = sorted({p.plan.cluster.name for p in members})
    if kinds not in (["slurm"], ["local"]):
        raise ValueError(f"a sweep runs on cluster=slurm or cluster=local, got cluster={','.join(kinds)}; "
                         "give one of the two (cluster=debug and cluster=inline run a single process)")
    return kinds[0]


def open_manifest(sweep_dir: Path, kind: str, members: list[Member]) -> Manifest:
    """The sweep's manifest with these members in it (an earlier batch of the same sweep stays on record)."""
    sweep_dir.mkdir(parents=True, exist_ok=True)
    manifest = Manifest(sweep_dir=str(sweep_dir.resolve()), kind=kind, created_at=now(), members=[])
    if manifest.path.is_file():  # hydra.sweeper.max_batch_size sends a sweep in batches
        manifest = Manifest.read(sweep_dir.resolve())
    replaced = {m.index for m in members}
    manifest.members = sorted([m for m in manifest.members if m.index not in replaced] + members,
                              key=lambda m: m.index)
    manifest.write()
    return manifest
