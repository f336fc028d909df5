"""The plan's strategy applied to a model: one function that chooses among the plain functions of
``jobs.strategies`` (ddp, fsdp, single) and ``jobs.pipeline`` (pipeline, hybrid)."""

import collections
import dataclasses
from collections.abc import Callable

import torch
from torch import nn

from cluster.parallel_dims import ParallelDims
from cluster.runtime.process_group import device_mesh
from jobs.pipeline import Pipeline, apply_pipeline
from jobs.plan import JobPlan
from jobs.precision import fsdp_policy
from jobs.strategies import apply_ddp, apply_fsdp, apply_single, checkpoint_blocks, compile_blocks


def parallelize(model: nn.Module, plan: JobPlan, dims: ParallelDims, *, rank: int, device: torch.device,
                sample_shape: tuple[int, ...], loss_fn: Callable[..., torch.Tensor],
                example: torch.Tensor | None = None, prepared: collections.Counter[str] | None = None
                ) -> tuple[nn.Module, Pipeline | None]:
    """Apply the plan's strategy: the module to train, and the pipeline when there is one. ``example``: one input
    as the data gives it (DDP lays out its buckets with it). ``loss_fn``: what a pipeline's last stage computes
    (and calls backward on). ``prepared`` counts this rank's blocks checkpointed and compiled."""
    strategy = plan.strategy
    mp_policy = fsdp_policy(plan.train.precision) if plan.train.precision != "fp32" else None
    counts = prepared if prepared is not None else collections.Counter()

    def prepare(module: nn.Module) -> None:
        counts.update(prepare_blocks(module, plan=plan))

    if not strategy.pipelined:  # a pipeline's stages are prepared once cut
        prepare(model)
    if strategy.name == "ddp":
        sample = torch.stack([example, example]) if isinstance(example, torch.Tensor) else None
        return apply_ddp(model, device=device, bucket_cap_mb=strategy.bucket_cap_mb, sample=sample), None
    if strategy.name == "fsdp":
        return apply_fsdp(model.to(device), mesh=device_mesh(device, dp=dims.world_size),
                          units=strategy.fsdp_units, mp_policy=mp_policy), None
    if not strategy.pipelined:
        return apply_single(model, device=device), None
    if dims.layers is None:  # a user's model: its layers are counted now that it is built
        if not isinstance(model, nn.Sequential):
            raise ValueError(f"strategy={strategy.name} cuts the model into stages, and {type(model).__name__} is not "
                             "an nn.Sequential: name the modules where its stages begin with strategy.split_points")
        dims = dataclasses.replace(dims, layers=len(model), counted_later=False)  # checked again, with the count
    mesh = device_mesh(device, dp=dims.dp, pp=dims.pp)
    return apply_pipeline(model, dims, rank=rank, mesh=mesh, device=device, sample_shape=sample_shape,
                          input_dtype=example.dtype if isinstance(example, torch.Tensor) else torch.float32,
                          schedule=strategy.schedule, replicate=strategy.replicate,
                          bucket_cap_mb=strategy.bucket_cap_mb, loss_fn=loss_fn,
                          split_points=strategy.split_points, fsdp_units=strategy.fsdp_units, mp_policy=mp_policy,
                          prepare=prepare)


def prepare_blocks(model: nn.Module, *, plan: JobPlan) -> dict[str, int]:
    """What is done to each block before a strategy wraps it: activation checkpointing, then compiling (which
    then compiles the recomputation too), as torchtitan orders them; how many blocks each."""
    done = {}
    if plan.strategy.activation_checkpointing:
        done["checkpointed"] = checkpoint_blocks(model)
    if plan.train.compile:
        done["compiled"] = compile_blocks(model, backend=plan.train.compile_backend)
    return done


def sharded_by_fsdp(plan: JobPlan, dims: ParallelDims) -> bool:
    """Whether FSDP2 holds the parameters (its policy then casts them for a lower precision, not autocast)."""
    strategy = plan.strategy
    return strategy.name == "fsdp" or (strategy.pipelined and strategy.replicate == "fsdp" and dims.dp > 1)
