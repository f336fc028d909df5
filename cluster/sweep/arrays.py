"""Members of a sweep to Slurm: grouped by resources, one job array per group, split below MaxArraySize.

Used when a sweep is launched and when ``python -m cluster retry`` sends members again; each member's
submission (function, arguments, resources) is saved beside the manifest, which is rewritten after
every array, so a failure half-way leaves what was submitted on record.
"""

import math
from pathlib import Path
from typing import Any

from cluster.rundir import check_unclaimed, claim
from cluster.slurm.commands import max_array_size
from cluster.slurm.resources import SlurmResources
from cluster.slurm.sbatch import submit_array
from cluster.sweep.manifest import Manifest, Member, array_chunks


def submit_members(manifest: Manifest, submissions: list[tuple[Member, dict[str, Any]]], *, parallelism: int,
                   max_size: int = 0) -> list[str]:
    """Submit every ``(member, {"fn", "args", "resources"})``; the array job ids, in order of submission.

    Refused, with nothing submitted, when a job that claimed a member's run directory is still queued or
    running (``cluster.rundir.check_unclaimed``); each member's directory is claimed by its array task.
    """
    check_unclaimed([Path(member.run_dir) for member, _ in submissions])
    manifest.log_dir.mkdir(parents=True, exist_ok=True)  # a retry after the logs were deleted
    arrays = []
    for resources, part in plan_arrays(submissions, array_limit(max_size)):
        jobs = submit_array(part[0][1]["fn"], [submission["args"] for _, submission in part],
                            resources=resources, folder=manifest.log_dir, parallelism=parallelism)
        for (member, _), job in zip(part, jobs):
            member.submitted(job.job_id)
            claim(Path(member.run_dir), member.slurm_id)
        manifest.save_submissions(part)
        arrays.append(part[0][0].job_id)
        manifest.write()
    return arrays


Submission = tuple[Member, dict[str, Any]]


def array_limit(max_size: int = 0) -> int:
    """Tasks per array at most: ``max_size`` (0: no wish) within the cluster's MaxArraySize, which always holds."""
    return int(min(max_size or math.inf, max_array_size()))


def plan_arrays(submissions: list[Submission], limit: int) -> list[tuple[SlurmResources, list[Submission]]]:
    """The job arrays ``submissions`` go into: one per resources, split below ``limit`` (MaxArraySize)."""
    groups: dict[SlurmResources, list[Submission]] = {}
    for member, submission in submissions:
        groups.setdefault(submission["resources"], []).append((member, submission))
    return [(resources, [group[i] for i in chunk]) for resources, group in groups.items()
            for chunk in array_chunks(len(group), limit)]
