"""Parallel strategies as plain functions: each takes a model and returns the module to train."""

import collections
import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard  # public since torch 2.6, our oldest
from torch.nn.parallel import DistributedDataParallel

from cluster.runtime.ddp import settle_buckets


def apply_ddp(model: nn.Module, *, device: torch.device, bucket_cap_mb: float,
              group: dist.ProcessGroup | None = None, sample: torch.Tensor | None = None) -> nn.Module:
    """Replicate ``model`` on every rank of ``group`` (all ranks by default); gradients are averaged by
    all-reduce during backward.

    DDP broadcasts the group's first rank's parameters at construction, so every replica starts identical.
    Given a ``sample`` input batch, the gradient buckets are laid out before training (``settle_buckets``).
    """
    device_ids = [device.index] if device.type == "cuda" else None
    ddp = DistributedDataParallel(model.to(device), device_ids=device_ids, bucket_cap_mb=bucket_cap_mb,
                                  process_group=group)
    if sample is not None:
        settle_buckets(ddp, sample.to(device))
    return ddp


def fsdp_units(model: nn.Module, class_names: tuple[str, ...] = ()) -> list[nn.Module]:
    """The modules FSDP shards one by one (innermost first), so that only one unit's parameters are gathered at a
    time: those of the classes named; by default the model's repeated blocks, each member of an ``nn.ModuleList``
    (a user's transformer layers), or else each child with parameters (a layer of an ``nn.Sequential``). Units
    that share a parameter (a head tied to the embedding) are left to the root: FSDP puts a parameter in one
    group only."""
    def has_parameters(module: nn.Module) -> bool:
        return any(True for _ in module.parameters())

    everything = [module for module in model.modules() if module is not model]
    if class_names:
        units = [module for module in everything if type(module).__name__ in class_names]
        if not units:
            classes = sorted({type(module).__name__ for module in everything})
            raise ValueError(f"strategy.fsdp_units={list(class_names)}: no module of {type(model).__name__} is of "
                             f"these classes; its classes: {', '.join(classes)}")
    else:
        units = [member for listed in everything if isinstance(listed, nn.ModuleList) for member in listed]
        units = units or list(model.children())
    names = collections.Counter(id(p) for _, p in model.named_parameters(remove_duplicate=False))
    tied = {key for key, count in names.items() if count > 1}  # one parameter under two names
    chosen = {id(unit) for unit in units if has_parameters(unit) and not tied & {id(p) for p in unit.parameters()}}
    return [module for module in reversed(everything) if id(module) in chosen]  # inner units before outer ones


def apply_fsdp(model: nn.Module, *, mesh: DeviceMesh, units: tuple[str, ...] = (), nested: bool = True,
               mp_policy: MixedPrecisionPolicy | None = None) -> nn.Module:
    """Shard parameters, gradients and optimizer state over ``mesh`` (FSDP2's ``fully_shard``): each of
    ``fsdp_units`` is its own unit, the root takes what is left. Gradients are averaged over the mesh by
    reduce-scatter, as DDP's all-reduce does. ``nested=False``: the model is one unit (a traced pipeline stage,
    whose graph reads its submodules' parameters directly, so their own units would never be gathered).
    ``mp_policy``: the precision of gathered parameters and reduced gradients (``jobs.precision``).
    """
    policy = mp_policy or MixedPrecisionPolicy()
    for unit in fsdp_units(model, units) if nested else ():
        fully_shard(unit, mesh=mesh, mp_policy=policy)
    fully_shard(model, mesh=mesh, mp_policy=policy)
    return model


def repeated_blocks(model: nn.Module) -> list[nn.Module]:
    """The model's blocks, the unit of activation checkpointing and compiling: the members of its
    ``nn.ModuleList``s (a user's transformer layers), else the children of a class it has several of (the built-in
    transformers' blocks), else every child with parameters."""
    everything = [module for module in model.modules() if module is not model]
    listed = [member for module in everything if isinstance(module, nn.ModuleList) for member in module]
    if listed:
        return listed
    children = [child for child in model.children() if any(True for _ in child.parameters())]
    kinds = [type(child) for child in children]
    return [child for child in children if kinds.count(type(child)) > 1] or children


def checkpoint_blocks(model: nn.Module) -> int:
    """``strategy.activation_checkpointing``: each block keeps only its input for backward and computes its
    activations again there (``torch.utils.checkpoint``, non-reentrant: the same random draws, so dropout and the
    numbers are those of a run without it). Done in place, so parameter names do not change; the blocks
    done."""
    from torch.utils.checkpoint import checkpoint

    blocks = repeated_blocks(model)
    for block in blocks:
        def checkpointed(*args: Any, _forward: Callable[..., Any] = block.forward, **kwargs: Any) -> Any:
            return checkpoint(_forward, *args, use_reentrant=False, **kwargs)

        block.forward = checkpointed
    return len(blocks)


def compile_blocks(model: nn.Module, *, backend: str = "inductor") -> int:
    """``train.compile``: ``torch.compile`` each block in place (``nn.Module.compile``: parameter names do not
    change), as torchtitan does: one graph per kind of block, compiled once; the blocks done."""
    blocks = repeated_blocks(model)
    for block in blocks:
        block.compile(backend=backend)
    return len(blocks)


def apply_single(model: nn.Module, *, device: torch.device) -> nn.Module:
    """One rank trains the whole model; nothing is communicated."""
    return model.to(device)


@contextlib.contextmanager
def gradient_sync(model: nn.Module, *, enabled: bool) -> Iterator[None]:
    """Backward passes inside keep their gradients on this rank when not ``enabled`` (all but the last of an
    accumulated step): DDP's ``no_sync``, FSDP2's ``set_requires_gradient_sync``. The pass with it enabled
    averages the sum over the replicas. A pipeline's stages sync as their schedule says."""
    if enabled:
        yield
    elif isinstance(model, DistributedDataParallel):
        with model.no_sync():
            yield
    elif hasattr(model, "set_requires_gradient_sync"):  # an FSDP2 module (fully_shard)
        model.set_requires_gradient_sync(False)  # type: ignore[operator]
        try:
            yield
        finally:
            model.set_requires_gradient_sync(True)  # type: ignore[operator]
    else:
        yield


def unwrap(model: nn.Module) -> nn.Module:
    """The user's module inside a strategy's wrapper (state-dict keys without ``module.``)."""
    return model.module if isinstance(model, DistributedDataParallel) else model
