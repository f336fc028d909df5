"""What a checkpoint of a training run holds, and putting it back: an exact resume.

Model and optimizer go through ``torch.distributed.checkpoint.state_dict`` (names without the
strategy's wrapper, sharded state as it is); the scheduler, the step, and every rank's RNG states
ride along. The data position is the step: the sampler's epoch and offset follow from it.
"""

import dataclasses
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_state_dict,
    set_state_dict,
)

from cluster.environment import TaskEnvironment
from cluster.runtime.checkpoint import (
    check_compatible,
    latest_checkpoint,
    read_marker,
    read_state,
    remove_partials,
    saved_keys,
)
from cluster.runtime.rng import capture_rng_state, restore_rng_state
from jobs.plan import JobPlan


@dataclasses.dataclass
class Trainee:
    """What the loop updates and a checkpoint must hold."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    step: int = 0  # optimizer steps completed
    loss: float = float("nan")  # global mean loss of the last logged step
    pipeline: Any = None  # this rank's jobs.pipeline.Pipeline, when the model is cut into stages


# Optimizer state keyed by parameter name ("state.<fqn>.exp_avg", "param_groups.<fqn>.lr"): pipeline stages
# then hold disjoint keys, and a checkpoint can be read by any split (torchtitan does the same for PP).
OPTIONS = StateDictOptions(flatten_optimizer_state_dict=True)


def rng_key(rank: int) -> str:
    return f"rng-rank-{rank:05d}"


def checkpoint_state(trainee: Trainee, rank: int, *, with_rng: bool = True) -> dict[str, Any]:
    """The state dict one rank contributes to a checkpoint (and the template it loads into)."""
    model, optimizer = get_state_dict(trainee.model, trainee.optimizer, options=OPTIONS)
    state = {"model": model, "optimizer": optimizer, "scheduler": trainee.scheduler.state_dict(),
             "progress": {"step": trainee.step, "loss": trainee.loss}}
    if with_rng:
        state[rng_key(rank)] = capture_rng_state()
    return state


def checkpoint_meta(plan: JobPlan, world_size: int) -> dict[str, Any]:
    """What goes into the marker: the fingerprint a resume must match."""
    return {"world_size": world_size, "config": plan.fingerprint(world_size)}


def check_resumable(plan: JobPlan, folder: Path, world_size: int) -> dict[str, Any]:
    """The marker of ``folder`` once it is whole and belongs to this plan and layout (or raise)."""
    marker = read_marker(folder)
    check_compatible(marker.get("config"), plan.fingerprint(world_size), folder=folder,
                     allowed=plan.train.allow_changes)
    return marker


def resume(trainee: Trainee, plan: JobPlan, env: TaskEnvironment, root: Path,
           group: dist.ProcessGroup | None = None) -> Path | None:
    """Load the newest complete checkpoint under ``root`` into ``trainee``; the folder, or None."""
    if env.is_main:
        remove_partials(root)  # what a killed writer left; no writer of this run has started yet
    dist.barrier()
    folder = latest_checkpoint(root)
    if folder is None:
        return None
    marker = check_resumable(plan, folder, env.world_size)
    # Another world size (allowed by the user) has other ranks: their RNG streams start fresh.
    same_layout = marker.get("world_size") == env.world_size
    state = checkpoint_state(trainee, env.rank, with_rng=same_layout)
    rng = state.get(rng_key(env.rank), {})
    if "cuda" in rng and not any(key.startswith(f"{rng_key(env.rank)}.cuda") for key in saved_keys(folder)):
        del rng["cuda"]  # written without CUDA (a CPU run): the GPU's generator keeps its seed
    read_state(state, folder, process_group=group)
    set_state_dict(trainee.model, trainee.optimizer, model_state_dict=state["model"],
                   optim_state_dict=state["optimizer"], options=OPTIONS)
    trainee.scheduler.load_state_dict(state["scheduler"])
    trainee.step, trainee.loss = int(state["progress"]["step"]), float(state["progress"]["loss"])
    if same_layout:
        restore_rng_state(state[rng_key(env.rank)])
    return folder
