"""Sweeps (``python -m jobs.train -m ...``): plan and check every member, then submit them all at once.

Every member becomes a ``JobPlan`` and passes the same checks as a single run (``jobs.checks``)
before anything is submitted; one bad member stops the sweep with its number and overrides named. On
Slurm, members with the same resources share a job array (split at the cluster's MaxArraySize; with
``hydra.launcher.pack=N``, N members to an array task), and the command returns once ``sbatch`` has
answered; with ``cluster=local`` a queue process runs them a few at a time (``cluster.sweep.local_queue``).
The manifest (``cluster.sweep.manifest``) records where each went.
"""

import dataclasses
import math
import sys
from pathlib import Path
from typing import Any

from cluster import history
from cluster.by_name import ByName
from cluster.errors import (
    ClusterError,
    RunDirectoryBusyError,
    SettingError,
    SlurmUnavailableError,
    SubmissionRefusedError,
)
from cluster.rundir import RunDir, check_unclaimed, remove_if_unused
from cluster.slurm.limits import check_against_cluster
from cluster.slurm.resources import SlurmResources
from cluster.slurm.sbatch import render_sbatch
from cluster.sweep.array_task import spans
from cluster.sweep.arrays import allocation, array_limit, plan_arrays, runner_args, submit_members
from cluster.sweep.local_queue import start_queue
from cluster.sweep.manifest import MANIFEST, SUBMISSIONS, Manifest, Member, now
from jobs.checks import check_before_start
from jobs.plan import JobPlan
from jobs.settings import SweepSettings
from jobs.user_errors import HYDRA_FILES, describe

# What a member runs, from its composed config (its plan is rebuilt there): a config tree shares its unchanged
# parts with the other members', so 10,000 of them pickle into one small file (a plan each would not).
RUN_MEMBER = {"slurm": ByName("jobs.task", "run_member"),  # on every rank of its array task
              "local": ByName("jobs.start", "run_local_member")}  # in the local queue's member process


@dataclasses.dataclass
class PlannedMember:
    member: Member
    plan: JobPlan
    tree: dict[str, Any]  # the composed config the plan was made from (jobs.plan.plan_from_tree)


def check_members(members: list[PlannedMember], *, live: bool = True, pack: int = 1) -> None:
    """Every member's checks, all of them; one ValueError naming each member that fails, and why. ``live``: also
    against the live Slurm cluster (a dry run does not ask it, as a single run's dry run does not), with the
    allocation a pack of ``pack`` members asks for."""
    problems: dict[str, list[Member]] = {}  # why -> the members it stops: 10,000 alike say it once
    checked: dict[SlurmResources, ClusterError | None] = {}  # resources -> the cluster's answer, asked once
    for planned in members:
        try:
            # A Slurm member's directory is made by its job: 10,000 members, no directory until they start.
            check_before_start(planned.plan, Path(planned.member.run_dir), make_run_dir=planned.plan.slurm is None)
            resources = planned.plan.slurm
            if live and resources is not None:
                if resources not in checked:
                    checked[resources] = against_cluster(resources, pack)
                if (refused := checked[resources]) is not None:
                    raise refused
        except (ValueError, FileNotFoundError, PermissionError, ClusterError) as error:
            problems.setdefault(describe(error), []).append(planned.member)
    if problems:
        lines = []
        for why, stopped in problems.items():
            first = stopped[0]
            named = f"member {first.index} ({' '.join(first.overrides) or 'no overrides'})"
            if len(stopped) > 1:
                named = f"members {spans([m.index for m in stopped])} ({len(stopped)}; the first: {named})"
            lines.append(f"{named}: {why}")
        count = sum(map(len, problems.values()))
        raise ValueError(f"{count} of {len(members)} sweep member(s) would fail, nothing was submitted:\n  "
                         + "\n  ".join(lines))


def against_cluster(resources: SlurmResources, pack: int) -> ClusterError | None:
    """What the live cluster says of the allocation a pack of members with ``resources`` asks for (None: fine)."""
    try:
        check_against_cluster(allocation(resources, pack=pack))
    except SettingError as error:
        if pack == 1:
            return error
        return SettingError(f"{error.template} (a pack of {pack} members asks for {pack} x {{k.timeout_min}}: lower "
                            "hydra.launcher.pack or {k.timeout_min})")
    except ClusterError as error:
        return error
    return None


def launch_sweep(members: list[PlannedMember], sweep_dir: Path, options: SweepSettings) -> Manifest | None:
    """Check all members, submit them (Slurm job arrays, or the local queue), write the manifest and say
    how to watch the sweep. A dry run (``cluster.dry_run=true``) says what it would submit, and submits nothing."""
    kind = sweep_kind(members)
    if options.pack > 1 and kind != "slurm":
        raise ValueError(f"hydra.launcher.pack={options.pack} packs members into Slurm allocations; cluster=local "
                         "runs hydra.launcher.local_parallelism members at a time: drop hydra.launcher.pack")
    dry_run = any(p.plan.cluster.dry_run for p in members)
    check_members(members, live=not dry_run, pack=options.pack)
    if dry_run:
        print(describe_dry_run(members, kind, options, sweep_dir), flush=True)
        return None
    if kind == "slurm":  # before the manifest is rewritten: until a member's job starts, it is its claim
        check_unclaimed([Path(p.member.run_dir) for p in members])
    manifest = open_manifest(sweep_dir, kind, [p.member for p in members], pack=options.pack)
    same: dict[SlurmResources | None, SlurmResources | None] = {}  # one object for equal resources: pickled once
    submissions = [(p.member, {"fn": RUN_MEMBER[kind], "args": (p.tree, Path(p.member.run_dir)),
                               "resources": same.setdefault(p.plan.slurm, p.plan.slurm)}) for p in members]
    if kind == "slurm":
        try:
            arrays = submit_members(manifest, submissions, parallelism=options.array_parallelism,
                                    max_size=options.max_array_size)
        except (SubmissionRefusedError, RunDirectoryBusyError):
            if not any(p.member.job_id for p in members):  # nothing of this batch went out: leave nothing of it
                forget(manifest, [p.member for p in members])
            raise
        packed = f", {options.pack} members to an allocation" if options.pack > 1 else ""
        where = f"as {len(arrays)} job array(s){packed}: {', '.join(arrays)}"
    else:
        manifest.save_submissions(submissions)
        queue = start_queue(manifest, [p.member for p in members], parallelism=options.local_parallelism)
        where = f"to a local queue (pid {queue}, {options.local_parallelism} at a time)"
    history.record(Path(manifest.sweep_dir), kind, members=len(manifest.members))
    print(f"submitted {len(members)} member(s) {where}\n"
          f"sweep dir: {manifest.sweep_dir}\n"
          f"watch:     python -m cluster status {manifest.sweep_dir}\n"
          f"results:   python -m cluster collect {manifest.sweep_dir}", file=sys.stdout, flush=True)
    return manifest


def describe_dry_run(members: list[PlannedMember], kind: str, options: SweepSettings, sweep_dir: Path) -> str:
    """What the sweep would submit: its job arrays and their sizes, and the batch script of the first."""
    if kind == "local":
        return (f"dry run: {len(members)} member(s) would run on this machine, {options.local_parallelism} at a "
                "time; nothing was started\n" + "\n".join(f"  member {p.member.index}: {' '.join(p.member.overrides)}"
                                                         for p in members))
    try:
        limit = array_limit(options.max_array_size)
        source = ("hydra.launcher.max_array_size" if limit == options.max_array_size
                  else "the cluster's MaxArraySize")
    except SlurmUnavailableError:
        limit, source = options.max_array_size or 1001, "Slurm's default MaxArraySize (the cluster did not answer)"
    submissions = [(p.member, {"resources": p.plan.slurm}) for p in members]
    pack = options.pack
    arrays = plan_arrays(submissions, limit, pack=pack)
    packed = f" of {pack} members each, one after another" if pack > 1 else ""
    lines = [f"dry run: {len(members)} member(s) would go to Slurm as {len(arrays)} job array(s) (at most {limit} "
             f"tasks{packed} each: {source}); nothing was submitted"]
    for number, (resources, part) in enumerate(arrays, start=1):
        indices = spans([member.index for member, _ in part])
        asked = allocation(resources, pack=pack, members=len(part))
        lines.append(f"  array {number}: members {indices} ({math.ceil(len(part) / pack)} tasks, at most "
                     f"{options.array_parallelism} at once): {asked.nodes} node(s) x {asked.tasks_per_node} "
                     f"task(s), {asked.timeout_min} min, partition {asked.partition or '(default)'}")
    resources, part = arrays[0]
    first = part[0][0]
    folder = sweep_dir.resolve()
    lines += [f"# the batch script of array 1 (its task 0 runs member {first.index}: {' '.join(first.overrides)})",
              render_sbatch(allocation(resources, pack=pack, members=len(part)), folder=RunDir(folder).logs,
                            array_size=math.ceil(len(part) / pack), array_parallelism=options.array_parallelism,
                            runner_args=runner_args(str(folder), [member.index for member, _ in part], pack))]
    return "\n".join(lines)


def forget(manifest: Manifest, members: list[Member]) -> None:
    """Take members that were never submitted off the record, with the directories made for them."""
    indices = {m.index for m in members}
    manifest.members = [m for m in manifest.members if m.index not in indices]
    for member in members:
        remove_if_unused(Path(member.run_dir), also=HYDRA_FILES)
    if manifest.members:
        manifest.write()
    else:  # Hydra's record of the sweep, the manifest and submitit's leftovers: the sweep never was
        remove_if_unused(Path(manifest.sweep_dir), also=(*HYDRA_FILES, "multirun.yaml", MANIFEST, SUBMISSIONS))


def leave_nothing(sweep_dir: Path, before: set[Path] | None) -> None:
    """After a sweep that submitted nothing (a member refused, a dry run): remove what it made in ``sweep_dir``
    (its members' run directories, Hydra's record), and ``sweep_dir`` itself when it did not exist (``before``:
    what it held before, None then). What was there before stays."""
    made = set(sweep_dir.iterdir()) - (before or set()) if sweep_dir.is_dir() else set()
    for path in made:
        if path.is_dir():
            remove_if_unused(path, also=HYDRA_FILES)
        elif path.name == "multirun.yaml":
            path.unlink()
    if before is None:
        remove_if_unused(sweep_dir, also=(*HYDRA_FILES, "multirun.yaml"))


def sweep_kind(members: list[PlannedMember]) -> str:
    """slurm or local: where every member of the sweep goes."""
    kinds = sorted({p.plan.cluster.name for p in members})
    if kinds not in (["slurm"], ["local"]):
        raise ValueError(f"a sweep runs on cluster=slurm or cluster=local, got cluster={','.join(kinds)}; "
                         "give one of the two (cluster=debug and cluster=inline run a single process)")
    return kinds[0]


def open_manifest(sweep_dir: Path, kind: str, members: list[Member], *, pack: int = 1) -> Manifest:
    """The sweep's manifest with these members in it (an earlier batch of the same sweep stays on record)."""
    sweep_dir.mkdir(parents=True, exist_ok=True)
    manifest = Manifest(sweep_dir=str(sweep_dir.resolve()), kind=kind, created_at=now(), members=[], pack=pack)
    if manifest.path.is_file():  # hydra.sweeper.max_batch_size sends a sweep in batches
        manifest = Manifest.read(sweep_dir.resolve())
        manifest.pack = pack
    replaced = {m.index for m in members}
    manifest.members = sorted([m for m in manifest.members if m.index not in replaced] + members,
                              key=lambda m: m.index)
    manifest.write()
    return manifest
