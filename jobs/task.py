"""What every rank runs, whatever started it: find its place, join the group, train under supervision."""

import os
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from cluster.environment import TaskEnvironment, detect_environment
from cluster.errors import ClusterError
from cluster.requeue import JobEnd
from cluster.runtime.checkpoint_writer import SaveFailedError
from cluster.runtime.process_group import process_group
from cluster.runtime.supervisor import BudgetSpentError, Supervisor
from cluster.submitit_compat import keep_result_folder
from jobs.loop import TrainingDivergedError, train
from jobs.plan import JobPlan
from jobs.user_errors import config_key

# Errors of the configuration or the run directory: the same on every retry.
DETERMINISTIC = (ValueError, FileNotFoundError, PermissionError, ClusterError)


def run_task(plan: JobPlan, run_dir: Path, env: TaskEnvironment | None = None) -> dict[str, Any] | None:
    """Train as one rank of the job; rank 0 returns the summary.

    A stop (preemption, time limit) or a retried failure ends the task with ``JobEnd``; the job comes back.
    """
    env = env or detect_environment()
    # Ranks sharing a node share its cores; oversubscribed threads make every rank slower.
    # Slurm already pins each task to its own CPUs.
    ranks_here = 1 if env.started_by == "slurm" else max(1, env.world_size // env.num_nodes)
    torch.set_num_threads(max(1, len(os.sched_getaffinity(0)) // ranks_here))
    with process_group(env, backend=plan.rank_backend, timeout_s=plan.distributed.timeout_s) as group:
        # Ranks started by hand (torchrun, srun) each composed their own Hydra run directory,
        # and a timestamped one can differ by a second between them: rank 0's wins.
        shared = [str(run_dir)]
        dist.broadcast_object_list(shared, src=0, device=group.device)
        run_dir = Path(shared[0])
        run_dir.mkdir(parents=True, exist_ok=True)  # a retried member whose directory was deleted starts anew
        supervisor = Supervisor(env, run_dir, budget=plan.requeue, warning_signal=plan.stop_signal,
                                lead_s=plan.signal_lead_s, device=group.device, spell=config_key)
        supervisor.start()
        try:
            summary = train(plan, env, group.device, run_dir, supervisor)
            if env.started_by in ("slurm", "local"):
                keep_result_folder()  # where submitit writes what this task returns
            return summary
        except (JobEnd, BudgetSpentError):  # the supervisor's own decisions
            raise
        except Exception as error:
            # A divergence comes back bit for bit after an exact resume; an error of the set-up (before the first
            # step: the configuration, the run directory, a checkpoint) too.
            repeats = isinstance(error, (TrainingDivergedError, SaveFailedError)) or (
                not supervisor.stepped and isinstance(error, DETERMINISTIC))
            supervisor.failed(error, step=supervisor.step, deterministic=repeats)
            raise
