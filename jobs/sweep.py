"""Sweeps (``python -m jobs.train -m ...``): plan and check every member, then submit them all at once.

Every member becomes a ``JobPlan`` and passes the same checks as a single run (``jobs.preflight``)
before anything is submitted; one bad member stops the sweep with its number and overrides named. On
Slurm, members with the same resources share a job array (split at the cluster's MaxArraySize), and the
command returns once ``sbatch`` has answered; with ``cluster=local`` a queue process runs them a few at
a time (``cluster.local_queue``). The manifest (``cluster.sweep``) records where each went.
"""

import dataclasses
import sys
from pathlib import Path

from cluster.by_name import ByName
from cluster.local_queue import start_queue
from cluster.slurm import SlurmResources
from cluster.slurm_limits import preflight as slurm_preflight
from cluster.sweep import Manifest, Member, SweepOptions, now
from cluster.sweep_submit import submit_members
from jobs.config import JobPlan
from jobs.launchers import RUN_TASK
from jobs.preflight import preflight

RUN_LOCAL = ByName("jobs.launchers", "run_local")  # in the local queue's member process


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
            preflight(planned.plan, Path(planned.member.run_dir))
            resources = planned.plan.slurm
            if resources is not None and resources not in resources_seen:
                resources_seen[resources] = slurm_preflight(resources).name
        except (ValueError, FileNotFoundError, PermissionError) as error:
            problems.append(f"member {planned.member.index} ({' '.join(planned.member.overrides) or 'no overrides'})"
                            f": {error}")
    if problems:
        raise ValueError(f"{len(problems)} of {len(members)} sweep member(s) would fail, nothing was submitted:\n  "
                         + "\n  ".join(problems))


def launch_sweep(members: list[PlannedMember], sweep_dir: Path, options: SweepOptions) -> Manifest:
    """Check all members, submit them (Slurm job arrays, or the local queue), write the manifest and say
    how to watch the sweep."""
    launcher = sweep_launcher(members)
    check_members(members)
    manifest = open_manifest(sweep_dir, launcher, [p.member for p in members])
    task = RUN_TASK if launcher == "slurm" else RUN_LOCAL
    submissions = [(p.member, {"fn": task, "args": (p.plan, Path(p.member.run_dir)), "resources": p.plan.slurm})
                   for p in members]
    if launcher == "slurm":
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


def sweep_launcher(members: list[PlannedMember]) -> str:
    """slurm or local: where every member of the sweep goes."""
    launchers = sorted({p.plan.cluster.name for p in members})
    if launchers not in (["slurm"], ["local"]):
        raise ValueError(f"a sweep runs on cluster=slurm or cluster=local, got cluster={','.join(launchers)}; "
                         "give one of the two (cluster=debug and cluster=inline run a single process)")
    return launchers[0]


def open_manifest(sweep_dir: Path, launcher: str, members: list[Member]) -> Manifest:
    """The sweep's manifest with these members in it (an earlier batch of the same sweep stays on record)."""
    sweep_dir.mkdir(parents=True, exist_ok=True)
    manifest = Manifest(sweep_dir=str(sweep_dir.resolve()), launcher=launcher, created_at=now(), members=[])
    if manifest.path.is_file():  # hydra.sweeper.max_batch_size sends a sweep in batches
        manifest = Manifest.read(sweep_dir.resolve())
    replaced = {m.index for m in members}
    manifest.members = sorted([m for m in manifest.members if m.index not in replaced] + members,
                              key=lambda m: m.index)
    manifest.write()
    return manifest
