"""Sweeps (``python -m jobs.train -m ...``): plan and check every member, then submit them all at once.

Every member becomes a ``JobPlan`` and passes the same checks as a single run (``jobs.launchers.preflight``)
before anything is submitted; one bad member stops the sweep with its number and overrides named. On
Slurm, members with the same resources share a job array (split at the cluster's MaxArraySize), and the
command returns once ``sbatch`` has answered; the manifest (``cluster.sweep``) records where each went.
"""

import dataclasses
import sys
from pathlib import Path

from cluster.slurm import SlurmResources
from cluster.slurm_limits import preflight as slurm_preflight
from cluster.sweep import Manifest, Member, SweepOptions, now
from cluster.sweep_submit import submit_members
from jobs.config import JobPlan
from jobs.launchers import preflight
from jobs.task import run_task


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
    """Check all members, submit them, write the manifest and say how to watch the sweep."""
    check_members(members)
    launchers = {p.plan.cluster.name for p in members}
    if launchers != {"slurm"}:
        raise ValueError(f"this launcher submits cluster=slurm sweeps, got cluster={','.join(sorted(launchers))}; "
                         "add cluster=slurm, or sweep locally with hydra/launcher=basic")
    sweep_dir.mkdir(parents=True, exist_ok=True)
    manifest = Manifest(sweep_dir=str(sweep_dir.resolve()), launcher="slurm", created_at=now(), members=[])
    if manifest.path.is_file():  # an earlier batch of this sweep (hydra.sweeper.max_batch_size) stays on record
        manifest = Manifest.read(sweep_dir.resolve())
    replaced = {p.member.index for p in members}
    manifest.members = sorted([m for m in manifest.members if m.index not in replaced] + [p.member for p in members],
                              key=lambda m: m.index)
    submissions = [(p.member, {"fn": run_task, "args": (p.plan, Path(p.member.run_dir)), "resources": p.plan.slurm})
                   for p in members]
    arrays = submit_members(manifest, submissions, parallelism=options.array_parallelism,
                            max_size=options.max_array_size)
    print(f"submitted {len(members)} member(s) as {len(arrays)} job array(s): {', '.join(arrays)}\n"
          f"sweep dir: {manifest.sweep_dir}\n"
          f"watch:     python -m cluster status {manifest.sweep_dir}\n"
          f"results:   python -m cluster collect {manifest.sweep_dir}", file=sys.stdout, flush=True)
    return manifest
