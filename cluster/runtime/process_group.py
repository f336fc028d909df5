"""Join and always leave a ``torch.distributed`` process group (NCCL on GPUs, gloo on CPU), and lay its
ranks out on a device mesh."""

import contextlib
import dataclasses
import datetime
import gc
from collections.abc import Iterator

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh

from cluster.environment import TaskEnvironment
from cluster.errors import SettingError, literal

BACKENDS = ("auto", "gloo", "nccl")


@dataclasses.dataclass(frozen=True)
class ProcessGroup:
    """What a joined task needs to place its work."""

    backend: str  # "gloo" or "nccl"
    device: torch.device  # where this rank's tensors live


def resolve_backend(requested: str, *, cuda_available: bool) -> str:
    """``auto`` means NCCL when this process sees a GPU, gloo otherwise."""
    if requested not in BACKENDS:
        raise SettingError(f"unknown {{k.backend}} {literal(repr(requested))}; use one of {', '.join(BACKENDS)}")
    if requested == "auto":
        return "nccl" if cuda_available else "gloo"
    if requested == "nccl" and not cuda_available:
        raise SettingError("{k.backend} nccl needs a GPU, and this process sees none; use {k.backend}=gloo or auto")
    return requested


def bind_device(env: TaskEnvironment, backend: str) -> torch.device:
    """The device this rank works on: its local rank's GPU for NCCL, the CPU for gloo."""
    if backend != "nccl":
        return torch.device("cpu")
    count = torch.cuda.device_count()
    # One visible GPU per task (Slurm's --gpus-per-task, a CUDA_VISIBLE_DEVICES per rank) is
    # device 0 whatever the local rank; otherwise local rank i takes GPU i.
    index = 0 if count == 1 else env.local_rank
    if index >= count:
        raise SettingError(
            f"local rank {env.local_rank} needs GPU {index} but only {count} are visible; "
            "ask for as many GPUs per node as tasks per node ({k.gpus_per_node} = {k.tasks_per_node})"
        )
    torch.cuda.set_device(index)
    return torch.device("cuda", index)


@contextlib.contextmanager
def process_group(env: TaskEnvironment, *, backend: str = "auto", timeout_s: float = 600) -> Iterator[ProcessGroup]:
    """Join the job's process group for the duration of the block, and leave it even on errors.

    A single process (no launcher) gets an in-memory store, so it needs no free port.
    """
    resolved = resolve_backend(backend, cuda_available=torch.cuda.is_available())
    device = bind_device(env, resolved)
    timeout = datetime.timedelta(seconds=timeout_s)
    if env.started_by == "single":
        dist.init_process_group(resolved, store=dist.HashStore(), rank=0, world_size=1, timeout=timeout)
    else:
        dist.init_process_group(
            resolved,
            init_method=f"tcp://{env.master_addr}:{env.master_port}",
            rank=env.rank,
            world_size=env.world_size,
            timeout=timeout,
        )
    try:
        yield ProcessGroup(backend=resolved, device=device)
    finally:
        # A DDP reducer keeps the group alive through a reference cycle; left to the interpreter's end, gloo's
        # threads are torn down with it and torch 2.14 aborts now and then ("terminate called ...").
        gc.collect()
        dist.destroy_process_group()


def device_mesh(device: torch.device, **dims: int) -> DeviceMesh:
    """The job's ranks on a mesh of the named dimensions, outermost first (``device_mesh(d, dp=2, pp=2)``:
    the pp ranks of one replica are consecutive)."""
    return init_device_mesh(device.type, tuple(dims.values()), mesh_dim_names=tuple(dims))
