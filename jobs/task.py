"""What every rank runs, whatever started it: join the job through the public API (``cluster.start``) and train."""

from pathlib import Path
from typing import Any

from cluster.environment import TaskEnvironment
from cluster.runtime.job import start
from cluster.submitit_compat import keep_result_folder
from jobs.loop import train
from jobs.plan import JobPlan, plan_from_tree
from jobs.user_errors import config_key


def run_task(plan: JobPlan, run_dir: Path, env: TaskEnvironment | None = None) -> dict[str, Any] | None:
    """Train as one rank of the job; rank 0 returns the summary.

    A stop (preemption, time limit) or a retried failure ends the task with ``JobEnd``; the job comes back.
    """
    cfg = plan.train
    with start(run_dir, env=env, backend=plan.rank_backend, timeout_s=plan.distributed.timeout_s,
               hang_timeout_s=plan.distributed.hang_timeout_s, health_check=plan.cluster.health_check,
               checkpoint_every_steps=cfg.checkpoint_every_steps, checkpoint_every_min=cfg.checkpoint_every_min,
               keep_checkpoints=cfg.keep_checkpoints,
               async_checkpoint=cfg.async_checkpoint, requeue=plan.requeue, warning_signal=plan.stop_signal,
               signal_lead_s=plan.signal_lead_s, config=plan.fingerprint_config(), allow_changes=plan.allowed_changes,
               spell=config_key) as job:
        summary = train(plan, job)
        if job.env.started_by in ("slurm", "local"):
            keep_result_folder()  # where submitit writes what this task returns (when submitit started it)
        return summary


def run_member(tree: dict[str, Any], run_dir: Path) -> dict[str, Any] | None:
    """A sweep member's task on Slurm (``cluster.sweep.array_task``): its plan, rebuilt from its composed config."""
    return run_task(plan_from_tree(tree), run_dir)
