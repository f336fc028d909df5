"""Pipeline model parallelism on ``torch.distributed.pipelining``, replicated over a dp x pp mesh
(``jobs.parallelize`` chooses it for strategy=pipeline and strategy=hybrid).

The model is cut into ``pp x stages_per_rank`` stages: a flat ``nn.Sequential`` (the transformer's embedding,
blocks and head, the CNN's layers, a user's) in groups of its layers, any other model at
``strategy.split_points`` (traced by ``torch.distributed.pipelining.pipeline``); each pipeline rank runs
its stages on micro-batches under a schedule (GPipe, 1F1B, interleaved 1F1B), and each stage is replicated
over its dp peers with DDP or FSDP2. Stages keep the parameter names of the whole model, so checkpoints (DCP)
have the same keys whatever the split, and a single process reads them like its own.
"""

import collections
import dataclasses
import os
from collections.abc import Callable

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import MixedPrecisionPolicy

from cluster.parallel_dims import ParallelDims
from jobs.precision import fp32_outputs
from jobs.strategies import apply_ddp, apply_fsdp

# torch.distributed.pipelining is imported where a model is cut: it adds ~0.5 s to every rank's start otherwise.


def schedule_class(name: str) -> Callable[..., object]:
    """``strategy.schedule``'s class: gpipe and 1f1b drive one stage per rank, interleaved a list of them."""
    from torch.distributed.pipelining import Schedule1F1B, ScheduleGPipe, ScheduleInterleaved1F1B

    classes: dict[str, Callable[..., object]] = {"gpipe": ScheduleGPipe, "1f1b": Schedule1F1B,
                                                 "interleaved": ScheduleInterleaved1F1B}
    return classes[name]


@dataclasses.dataclass
class Pipeline:
    """One rank's part of the pipeline and the schedule that drives it."""

    schedule: object  # a torch.distributed.pipelining schedule
    is_first: bool  # holds stage 0: feeds the inputs
    is_last: bool  # holds the last stage: computes the loss
    pp_group: dist.ProcessGroup  # the ranks of this pipeline
    pp_ranks: list[int]  # the global ranks of this rank's pipeline, stage order
    dp_ranks: list[int]  # the global ranks holding the same stages (this rank's replicas)
    parameters: list[nn.Parameter] = dataclasses.field(default_factory=list)  # this rank's stages' parameters
    stages: dict[int, nn.Module] = dataclasses.field(default_factory=dict)  # this rank's stages (wrapped), by index
    owners: list[int] = dataclasses.field(default_factory=list)  # the global rank of each stage, in order
    # (per-sample shape, dtype) of each tensor entering each stage, and leaving the last: what a stage receives
    boundaries: list[list[tuple[tuple[int, ...], torch.dtype]]] = dataclasses.field(default_factory=list)


def split_stages(model: nn.Module, dims: ParallelDims, *, split_points: tuple[str, ...] = (),
                 microbatch: torch.Tensor | None = None) -> list[nn.Module]:
    """``model`` cut into ``dims.stages`` stages whose parameters keep the whole model's names.

    At ``split_points`` (module names, each beginning a stage: torch.distributed.pipelining traces the model
    and cuts its graph there, whatever its ``forward``); otherwise an ``nn.Sequential`` in groups of its layers
    (``ParallelDims.layers_of``).
    """
    if split_points:
        assert microbatch is not None
        names = {name for name, _ in model.named_modules()}
        unknown = [point for point in split_points if point not in names]
        if unknown:
            children = ", ".join(name for name, _ in model.named_children())
            raise ValueError(f"strategy.split_points {unknown} name no module of {type(model).__name__}; name modules "
                             f"by their path (its children: {children}; deeper ones as blocks.3)")
        from torch.distributed.pipelining import SplitPoint, pipeline

        pipe = pipeline(model, mb_args=(microbatch,), split_spec=dict.fromkeys(split_points, SplitPoint.BEGINNING))
        return [pipe.get_stage_module(stage) for stage in range(pipe.num_stages)]
    if not isinstance(model, nn.Sequential) or len(model) != dims.layers:
        raise ValueError(f"{type(model).__name__} is not the sequence of {dims.layers} layers the plan cuts; "
                         "name where its stages begin with strategy.split_points (module names), or give an "
                         "nn.Sequential")
    layers = list(model.named_children())
    return [nn.Sequential(collections.OrderedDict(layers[i] for i in dims.layers_of(stage)))
            for stage in range(dims.stages)]


def untie_across_stages(stages: list[nn.Module]) -> list[str]:
    """Give every stage after the first that holds a parameter it shares with an earlier stage a copy of its own;
    what was untied, as sentences."""
    first: dict[int, tuple[int, str]] = {}
    notes = []
    for index, stage in enumerate(stages):
        for name, parameter in list(stage.named_parameters(remove_duplicate=False)):
            owner = first.setdefault(id(parameter), (index, name))
            if owner[0] == index:
                continue
            path, _, attribute = name.rpartition(".")
            setattr(stage.get_submodule(path), attribute, nn.Parameter(parameter.detach().clone()))
            notes.append(f"{name} (stage {index}) was tied to {owner[1]} (stage {owner[0]}); a pipeline cannot "
                         "share one parameter between stages: each trains its own copy from here on")
    return notes


def stage_boundaries(stages: list[nn.Module], microbatch: torch.Tensor) -> list[tuple[torch.Tensor, ...]]:
    """The tensors entering each stage and those leaving the last, for one micro-batch (zeros, as placeholders).

    Computed in eval mode and without grad, so that no RNG is drawn and no DDP wrapper runs; every boundary
    after the inputs is marked as needing a gradient, so that the stages exchange gradients across it.
    """
    boundaries: list[tuple[torch.Tensor, ...]] = [(microbatch,)]
    was_training = [stage.training for stage in stages]
    with torch.no_grad():
        for stage in stages:
            out = stage.eval()(*boundaries[-1])
            out = tuple(out) if isinstance(out, (tuple, list)) else (out,)
            boundaries.append(tuple(torch.zeros_like(tensor).requires_grad_() for tensor in out))
    for stage, training in zip(stages, was_training):
        stage.train(training)
    return boundaries


def merge_stages(stages: list[nn.Module]) -> nn.Module:
    """One module holding a rank's stages under the whole model's names (for the optimizer and checkpoints)."""
    if len(stages) == 1:
        return stages[0]
    merged = nn.Module()

    def attach(into: nn.Module, name: str, module: nn.Module) -> None:
        existing = into._modules.get(name)  # noqa: SLF001  (a container both stages hold parts of: blocks)
        if existing is None:
            into.add_module(name, module)
            return
        if any(True for _ in existing.parameters(recurse=False)) or any(True for _ in existing.buffers(recurse=False)):
            raise ValueError(f"two stages of this rank both hold {name}: cut the model elsewhere")
        if existing not in fresh:  # a stage's own container: the union goes into a new one, the stage is kept whole
            union = nn.Module()
            for child_name, child in existing.named_children():
                union.add_module(child_name, child)
            into.add_module(name, union)
            fresh.add(union)
            existing = union
        for child_name, child in module.named_children():
            attach(existing, child_name, child)

    fresh: set[nn.Module] = {merged}
    for stage in stages:
        for name, child in stage.named_children():
            attach(merged, name, child)
    return merged


def apply_pipeline(model: nn.Module, dims: ParallelDims, *, rank: int, mesh: DeviceMesh, device: torch.device,
                   sample_shape: tuple[int, ...], schedule: str, replicate: str, bucket_cap_mb: float,
                   input_dtype: torch.dtype = torch.float32,
                   loss_fn: Callable[..., torch.Tensor], split_points: tuple[str, ...] = (),
                   fsdp_units: tuple[str, ...] = (), mp_policy: MixedPrecisionPolicy | None = None,
                   prepare: Callable[[nn.Module], None] = lambda stage: None) -> tuple[nn.Module, Pipeline]:
    """This rank's stages (as one module with the whole model's layer names) and its pipeline.

    ``mesh`` is the (dp, pp) device mesh; the returned module is what the optimizer and checkpoints see.
    ``prepare``: done to each of this rank's stages before it is wrapped (activation checkpointing, compiling).
    ``mp_policy``: mixed precision (``jobs.precision``); the stages then hand on fp32 activations, the boundaries'
    dtype as laid out here. A parameter two stages share (a head tied to the embedding) is untied: each stage
    trains its own copy, as the ranks holding them cannot share one.
    """
    from torch.distributed.pipelining import PipelineStage

    _, pp_index = dims.coordinates(rank)
    microbatch = torch.zeros(dims.forward_batch_size, *sample_shape, dtype=input_dtype)  # token ids: int64
    all_stages = split_stages(model, dims, split_points=split_points, microbatch=microbatch)
    for note in untie_across_stages(all_stages):
        if rank == 0:
            print(f"notice: {note}", flush=True)
    boundaries = stage_boundaries(all_stages, microbatch)
    mine = dims.stages_of(pp_index)
    runners: list[PipelineStage] = []
    wrapped: dict[int, nn.Module] = {}
    for index in mine:
        stage: nn.Module = all_stages[index].to(device)
        prepare(stage)
        if mp_policy is not None:
            fp32_outputs(stage)
        if dims.dp > 1 and replicate == "fsdp":
            stage = apply_fsdp(stage, mesh=mesh["dp"], units=fsdp_units, nested=not split_points, mp_policy=mp_policy)
        elif dims.dp > 1:
            stage = apply_ddp(stage, device=device, bucket_cap_mb=bucket_cap_mb, group=mesh["dp"].get_group())
        wrapped[index] = stage
        # Shapes given up front: torch 2.14 infers them by running the stage with grad enabled, which, through
        # DDP outside no_sync, arms DDP's reducer and all-reduces the first micro-batch's gradients on their own.
        # The sum is the same but rounds differently on a wrapper's first step, so a resumed run drifted ~1e-8.
        runners.append(PipelineStage(stage, index, dims.stages, device, group=mesh["pp"].get_group(),
                                     input_args=tuple(t.to(device) for t in boundaries[index]),
                                     output_args=tuple(t.to(device) for t in boundaries[index + 1])))
    # The loss is a mean per micro-batch; the schedule averages over them.
    driver = schedule_class(schedule)(runners if schedule == "interleaved" else runners[0],
                                      n_microbatches=dims.microbatches, loss_fn=loss_fn)
    if split_points:
        local = merge_stages([all_stages[index] for index in mine])
    else:
        local = nn.Sequential(collections.OrderedDict(
            (name, layer) for index in mine for name, layer in all_stages[index].named_children()))
    pp_ranks = dist.get_process_group_ranks(mesh["pp"].get_group())
    return local, Pipeline(schedule=driver, is_first=0 in mine, is_last=dims.stages - 1 in mine,
                           pp_group=mesh["pp"].get_group(), pp_ranks=pp_ranks,
                           dp_ranks=dist.get_process_group_ranks(mesh["dp"].get_group()),
                           parameters=list(local.parameters()), stages=wrapped,
                           owners=[pp_ranks[dims.stage_owner(stage)] for stage in range(dims.stages)],
                           boundaries=[[(tuple(t.shape[1:]), t.dtype) for t in tensors] for tensors in boundaries])


def pipeline_step(pipeline: Pipeline, inputs: torch.Tensor, targets: torch.Tensor, *,
                  accumulate: bool = False) -> torch.Tensor:
    """Forward and backward of one batch through the pipeline; the batch's mean loss on the last stage, else 0.

    ``accumulate``: add the gradients to those already there (the schedule scales the stages' gradients by its
    micro-batches at its end, which would scale the earlier ones again): they are set aside during the run.
    """
    losses: list[torch.Tensor] = []
    args = (inputs,) if pipeline.is_first else ()
    kwargs = {"target": targets, "losses": losses} if pipeline.is_last else {}
    kept = [parameter.grad for parameter in pipeline.parameters] if accumulate else []
    for parameter in pipeline.parameters if accumulate else ():
        parameter.grad = None
    pipeline.schedule.step(*args, **kwargs)  # type: ignore[attr-defined]
    for parameter, earlier in zip(pipeline.parameters, kept, strict=False):
        if earlier is not None:
            parameter.grad = earlier if parameter.grad is None else parameter.grad.add_(earlier)
    if not pipeline.is_last:
        return torch.zeros((), device=inputs.device)
    return torch.stack([loss.detach() for loss in losses]).mean()


def pipeline_forward(pipeline: Pipeline, inputs: torch.Tensor) -> torch.Tensor | None:
    """The model's output for ``inputs`` (on the last stage; None elsewhere), stage after stage, without a
    schedule: forward only, for an evaluation (torch's ``schedule.eval`` came after torch 2.6). Every rank of the
    pipeline calls it with a batch of the same size; a stage's outputs go to the next stage's rank."""
    rank, batch = dist.get_rank(), inputs.shape[0]
    carried: tuple[torch.Tensor, ...] = (inputs,)
    for index, owner in enumerate(pipeline.owners):
        if owner != rank:
            continue
        if index > 0 and pipeline.owners[index - 1] != rank:  # from the previous stage's rank
            carried = tuple(torch.empty((batch, *shape), dtype=dtype, device=inputs.device)
                            for shape, dtype in pipeline.boundaries[index])
            for tensor in carried:
                dist.recv(tensor, src=pipeline.owners[index - 1], group=pipeline.pp_group)
        out = pipeline.stages[index](*carried)
        carried = tuple(out) if isinstance(out, (tuple, list)) else (out,)
        carried = tuple(tensor.to(dtype) for tensor, (_, dtype) in zip(carried, pipeline.boundaries[index + 1],
                                                                       strict=True))
        if index + 1 < len(pipeline.owners) and pipeline.owners[index + 1] != rank:
            for tensor in carried:
                dist.send(tensor.contiguous(), dst=pipeline.owners[index + 1], group=pipeline.pp_group)
    return carried[0] if pipeline.is_last else None


def gather_places(model: nn.Module, pipeline: Pipeline | None, *, local_rank: int) -> list[dict[str, object]]:
    """Where every rank runs and what it holds, as each rank sees it from inside the job (rank order)."""
    rank, world = dist.get_rank(), dist.get_world_size()
    place = {"rank": rank, "host": os.uname().nodename, "local_rank": local_rank,
             "layers": [name for name, _ in model.named_children()] if pipeline else "all",
             "pp_ranks": pipeline.pp_ranks if pipeline else [rank],
             "dp_ranks": pipeline.dp_ranks if pipeline else list(range(world))}
    places: list[dict[str, object]] = [{} for _ in range(world)]
    dist.all_gather_object(places, place)
    return places


def gather_state(local: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The whole model's tensors on every rank, from each rank's stages (for the digest)."""
    mine = {name: tensor.detach().cpu() for name, tensor in local.items()}
    parts: list[dict[str, torch.Tensor]] = [{} for _ in range(dist.get_world_size())]
    dist.all_gather_object(parts, mine)
    return {name: tensor for part in parts for name, tensor in part.items()}
