"""The plan's strategy applied to a model: one function that chooses among the plain functions of
``jobs.strategies`` (ddp, fsdp, single) and ``jobs.pipeline`` (pipeline, hybrid)."""

import torch
from torch import nn

from cluster.parallel_dims import ParallelDims
from cluster.runtime.process_group import device_mesh
from jobs.pipeline import Pipeline, apply_pipeline
from jobs.plan import JobPlan
from jobs.strategies import apply_ddp, apply_fsdp, apply_single


def parallelize(model: nn.Module, plan: JobPlan, dims: ParallelDims, *, rank: int, device: torch.device,
                sample_shape: tuple[int, ...]) -> tuple[nn.Module, Pipeline | None]:
    """Apply the plan's strategy: the module to train, and the pipeline when there is one."""
    strategy = plan.strategy
    if strategy.name == "ddp":
        return apply_ddp(model, device=device, bucket_cap_mb=strategy.bucket_cap_mb), None
    if strategy.name == "fsdp":
        return apply_fsdp(model.to(device), mesh=device_mesh(device, dp=dims.world_size)), None
    if not strategy.pipelined:
        return apply_single(model, device=device), None
    mesh = device_mesh(device, dp=dims.dp, pp=dims.pp)
    return apply_pipeline(model, dims, rank=rank, mesh=mesh, device=device, sample_shape=sample_shape,
                          schedule=strategy.schedule, replicate=strategy.replicate,
                          bucket_cap_mb=strategy.bucket_cap_mb)
