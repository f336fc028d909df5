"""Members of a sweep to Slurm: grouped by resources, one job array per group, split below MaxArraySize, and
packed N members to an array task when asked.

Used when a sweep is launched and when ``python -m cluster retry`` sends members again. Every member's
submission (function, arguments, resources) goes into the sweep's one ``submissions.pkl`` before the first
``sbatch``; an array's script names its members (``--members 0-999``) and each task reads its own from that
file (``cluster.sweep.array_task``). A refusal half-way leaves what was submitted on record in the manifest.
"""

import dataclasses
import math
from typing import Any

from cluster.slurm.commands import max_array_size
from cluster.slurm.resources import SlurmResources
from cluster.slurm.sbatch import submit_array
from cluster.sweep.array_task import spans
from cluster.sweep.manifest import Manifest, Member, array_chunks

Submission = tuple[Member, dict[str, Any]]


def submit_members(manifest: Manifest, submissions: list[Submission], *, parallelism: int,
                   max_size: int = 0) -> list[str]:
    """Submit every ``(member, {"fn", "args", "resources"})``, ``manifest.pack`` to an array task; the array job
    ids, in order of submission. The manifest is written once they are all out, or when one is refused (with those
    that went out before it).

    The caller has checked that no live job claimed the members' run directories (``check_unclaimed``).
    """
    manifest.log_dir.mkdir(parents=True, exist_ok=True)  # a retry after the logs were deleted
    manifest.save_submissions(submissions)
    pack, arrays = manifest.pack, []
    try:
        for resources, part in plan_arrays(submissions, array_limit(max_size), pack=pack):
            job_id = submit_array(allocation(resources, pack=pack, members=len(part)),
                                  size=math.ceil(len(part) / pack), folder=manifest.log_dir, parallelism=parallelism,
                                  runner_args=runner_args(manifest.sweep_dir, [m.index for m, _ in part], pack))
            for position, (member, _) in enumerate(part):
                member.submitted(f"{job_id}_{position // pack}")
            arrays.append(job_id)
    finally:
        if arrays:
            manifest.write()
    return arrays


def runner_args(sweep_dir: str, indices: list[int], pack: int) -> list[str]:
    """What the array's tasks run (``cluster.slurm.task_runner``): the sweep, its members in task order, the pack."""
    return ["--sweep", sweep_dir, "--members", spans(indices), *(["--pack", str(pack)] if pack > 1 else [])]


def allocation(resources: SlurmResources, *, pack: int, members: int = 0) -> SlurmResources:
    """What one array task asks Slurm for: a member's resources, for as long as its pack's members take one after
    another (``members``: how many the array holds, when fewer than a pack)."""
    count = min(pack, members) if members else pack
    return resources if count <= 1 else dataclasses.replace(resources, timeout_min=resources.timeout_min * count)


def array_limit(max_size: int = 0) -> int:
    """Tasks per array at most: ``max_size`` (0: no wish) within the cluster's MaxArraySize, which always holds."""
    return int(min(max_size or math.inf, max_array_size()))


def plan_arrays(submissions: list[Submission], limit: int, *, pack: int = 1) -> list[tuple[SlurmResources,
                                                                                        list[Submission]]]:
    """The job arrays ``submissions`` go into: one per resources, split so that no array has more than ``limit``
    tasks (MaxArraySize) of ``pack`` members each."""
    groups: dict[SlurmResources, list[Submission]] = {}
    for member, submission in submissions:
        groups.setdefault(submission["resources"], []).append((member, submission))
    return [(resources, [group[i] for i in chunk]) for resources, group in groups.items()
            for chunk in array_chunks(len(group), limit * pack)]
