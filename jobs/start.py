"""One function per ``cluster=`` choice: check the plan against its world, start the ranks, return
rank 0's summary. Checks that can fail run here, before any rank starts."""

import contextlib
import dataclasses
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cluster import history, rundir
from cluster.by_name import ByName
from cluster.environment import SINGLE_PROCESS, detect_environment
from cluster.local.interrupt import Interrupted, interrupted_message
from cluster.local.ranks import launch_local
from cluster.parallel_dims import ParallelDims
from cluster.requeue import EXIT_INTERRUPTED
from cluster.rundir import RunDir
from cluster.slurm.limits import check_against_cluster
from cluster.slurm.resources import SlurmResources
from cluster.slurm.sbatch import follow, render_sbatch, submit
from jobs.checks import check_before_start
from jobs.metrics import MetricsFollower, ProgressLine
from jobs.plan import JobPlan, plan_from_tree
from jobs.user_errors import phrase

Summary = dict[str, Any] | None
# What every rank runs, imported where it runs: the launching process needs no torch (2-4 s to import),
# so local ranks start that much sooner, and a Slurm submission returns that much sooner.
RUN_TASK = ByName("jobs.task", "run_task")


def run_local(plan: JobPlan, run_dir: Path) -> Summary:
    """``cluster=local``: N ranks on this machine through submitit's LocalExecutor, each on a GPU of its own
    (NCCL) or all on the CPU (gloo): ``cluster.devices``."""
    devices = plan.local_devices()
    if devices.notice:
        print(f"notice: {phrase(devices.notice)}", file=sys.stderr)
    # The ranks get the number and the backend decided here, not "auto" to guess again each on its own.
    plan = dataclasses.replace(plan, cluster=dataclasses.replace(plan.cluster, tasks_per_node=devices.ranks),
                               distributed=dataclasses.replace(plan.distributed, backend=devices.backend))
    check_before_start(plan, run_dir)
    progress = ProgressLine(plan.train.steps, stream=sys.stderr)
    before = len(rundir.read_events(run_dir))
    try:
        with rundir.hold(run_dir), contextlib.closing(progress):
            rundir.check_unclaimed([run_dir])  # a Slurm job may train here too
            return launch_local(
                RUN_TASK, plan, run_dir,
                tasks=devices.ranks, timeout_min=plan.cluster.timeout_min, signal_lead_s=plan.cluster.signal_lead_s,
                devices=devices.per_rank, log_dir=RunDir(run_dir).logs,
                on_poll=MetricsFollower(run_dir, progress).poll,
            )
    except Interrupted as stop:
        print(interrupted_message(run_dir, stop, since=before), file=sys.stderr)
        raise SystemExit(EXIT_INTERRUPTED) from None


def run_local_member(tree: dict[str, Any], run_dir: Path) -> Summary:
    """A ``cluster=local`` sweep member, in its local queue's process: its plan, rebuilt from its composed config."""
    return run_local(plan_from_tree(tree), run_dir)


def run_debug(plan: JobPlan, run_dir: Path) -> Summary:
    """``cluster=debug``: one rank in this very process; breakpoints and pdb work."""
    check_before_start(plan, run_dir)
    with rundir.hold(run_dir):
        rundir.check_unclaimed([run_dir])
        return RUN_TASK(plan, run_dir, env=SINGLE_PROCESS)


def run_inline(plan: JobPlan, run_dir: Path) -> Summary:
    """``cluster=inline``: this process is already one rank (torchrun, a hand-written srun)."""
    env = detect_environment()
    if env.is_main:
        check_before_start(plan, run_dir, world_size=env.world_size)
    return RUN_TASK(plan, run_dir, env=env)


def rank_layout(resources: SlurmResources, dims: ParallelDims) -> str:
    """Which rank runs where and holds what, as a table: known before the job starts, up to the node names."""
    lines = ["rank  node  local rank  device  stages (layers)  dp peers"]
    for rank in range(resources.world_size):
        node, local = divmod(rank, resources.tasks_per_node)
        device = f"cuda:{local}" if resources.gpus_per_node else "cpu"
        _, pp_index = dims.coordinates(rank)
        if dims.stages > 1 and dims.layers is None:  # a user's nn.Sequential: cut evenly once it is built
            stages = ", ".join(str(s) for s in dims.stages_of(pp_index))
        elif dims.stages > 1:
            stages = ", ".join(f"{s} ({dims.layers_of(s).start}-{dims.layers_of(s).stop - 1})"
                               for s in dims.stages_of(pp_index))
        else:
            stages = "whole model"
        peers = ",".join(map(str, dims.dp_peers(rank)))
        lines.append(f"{rank:>4}  {node:>4}  {local:>10}  {device:>6}  {stages:<15}  {peers}")
    return "\n".join(lines)


def run_slurm(plan: JobPlan, run_dir: Path) -> Summary:
    """``cluster=slurm``: submit one job whose tasks are the ranks; return at once unless asked to wait."""
    resources = plan.slurm
    assert resources is not None
    check_before_start(plan, run_dir)
    if warning := resources.timing_warning():
        print(f"warning: {phrase(warning)}", file=sys.stderr)
    log_dir = RunDir(run_dir).logs
    if plan.cluster.dry_run:
        print(render_sbatch(resources, folder=log_dir.resolve()))
        print(f"# rank layout: {resources.nodes} node(s) x {resources.tasks_per_node} task(s); "
              "nodes are numbered in the order of the job's node list, node 0 is MASTER_ADDR"
              + (f"; elastic: it may start on {resources.min_nodes} to {resources.nodes} nodes, each start "
                 "resumes on the ranks it got" if resources.elastic else ""))
        print(rank_layout(resources, plan.check_world(resources.world_size)))
        return None
    partition = check_against_cluster(resources)
    # One live run per directory: no other submission (or local run) while this one submits, and no job queued
    # or running that claimed it. The job holds the claim until it ends, requeues included.
    with rundir.hold(run_dir):
        rundir.check_unclaimed([run_dir])
        job = submit(RUN_TASK, plan, run_dir, resources=resources, folder=log_dir.resolve())
        rundir.claim(run_dir, job.job_id)
    history.record(run_dir, "run", job=job.job_id)
    print(f"submitted job {job.job_id} to partition {partition.name}: "
          f"{f'{resources.min_nodes}-' if resources.elastic else ''}{resources.nodes} node(s) x "
          f"{resources.tasks_per_node} task(s)\n"
          f"run dir: {run_dir.resolve()}\n"
          f"logs:    {job.paths.stdout} (rank 0; rank r: {job.job_id}_r_log.out/.err)\n"
          f"follow:  squeue -j {job.job_id}; tail -f {job.paths.stdout}", flush=True)
    if not plan.cluster.wait:
        return None
    progress = ProgressLine(plan.train.steps, stream=sys.stderr)
    with contextlib.closing(progress):
        return follow(job, run_dir, on_poll=MetricsFollower(run_dir, progress).poll)


START: dict[str, Callable[[JobPlan, Path], Summary]] = {
    "local": run_local,
    "debug": run_debug,
    "inline": run_inline,
    "slurm": run_slurm,
}
