"""Members of a sweep to Slurm: grouped by resources, one job array per group, split below MaxArraySize.

Used when a sweep is launched and when ``python -m cluster retry`` sends members again; each member's
submission (function, arguments, resources) is saved beside the manifest, which is rewritten after
every array, so a failure half-way leaves what was submitted on record.
"""

import math
from typing import Any

from cluster.slurm.commands import max_array_size
from cluster.slurm.sbatch import submit_array
from cluster.sweep.manifest import Manifest, Member, array_chunks


def submit_members(manifest: Manifest, submissions: list[tuple[Member, dict[str, Any]]], *, parallelism: int,
                   max_size: int = 0) -> list[str]:
    """Submit every ``(member, {"fn", "args", "resources"})``; the array job ids, in order of submission."""
    limit = int(min(max_size or math.inf, max_array_size()))  # the cluster's limit always holds
    groups: dict[Any, list[tuple[Member, dict[str, Any]]]] = {}
    for member, submission in submissions:
        groups.setdefault(submission["resources"], []).append((member, submission))
    arrays = []
    for resources, group in groups.items():
        for chunk in array_chunks(len(group), limit):
            part = [group[i] for i in chunk]
            jobs = submit_array(part[0][1]["fn"], [submission["args"] for _, submission in part],
                                resources=resources, folder=manifest.log_dir, parallelism=parallelism)
            for (member, _), job in zip(part, jobs):
                member.submitted(job.job_id)
            manifest.save_submissions(part)
            arrays.append(part[0][0].job_id)
            manifest.write()
    return arrays
