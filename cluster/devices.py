"""Which GPU each local rank gets, and over which backend the ranks talk: decided once, before any rank
starts, from what this machine shows. Torch-free.

The rule: ranks that each get a GPU of their own talk NCCL; more ranks than GPUs share nothing (NCCL
refuses two ranks on one GPU, "Duplicate GPU detected") and train on the CPU over gloo, with a one-line
notice, unless NCCL was asked for, which is then refused with the fix. Asked for no number of ranks, a
machine starts one rank per GPU, or ``CPU_RANKS`` without GPUs. A user's ``CUDA_VISIBLE_DEVICES`` is the
set of GPUs to use, in its order; each rank sees exactly one of them (its local rank's), as on Slurm
with one GPU per task.
"""

import dataclasses
import glob
import os
from collections.abc import Callable, Mapping

from cluster.errors import SettingError

CPU_RANKS = 2  # ranks on a machine without GPUs when no number is asked for


@dataclasses.dataclass(frozen=True)
class LocalDevices:
    """Where the ranks of a local run train."""

    ranks: int  # how many ranks to start
    backend: str  # "nccl" (a GPU per rank) or "gloo" (on the CPU)
    per_rank: tuple[str, ...]  # each rank's CUDA_VISIBLE_DEVICES: one GPU, or "" (none)
    notice: str = ""  # a template (``cluster.errors``) telling why GPUs are left unused, or ""


def visible_gpus(environ: Mapping[str, str] | None = None,
                 count: Callable[[], int] | None = None) -> list[str]:
    """The GPUs this process may use, as CUDA_VISIBLE_DEVICES entries: the user's mask, or 0..N-1."""
    environ = os.environ if environ is None else environ
    mask = environ.get("CUDA_VISIBLE_DEVICES")
    if mask is not None:
        entries = []
        for entry in (part.strip() for part in mask.split(",")):
            if not entry or entry.startswith("-"):
                break  # CUDA stops at the first invalid entry: the ones after it are hidden too
            entries.append(entry)
        return entries
    return [str(index) for index in range((count or _device_count)())]


def _device_count() -> int:
    """The GPUs of this machine: one NVIDIA device file each (no torch: 2-4 s to import, and it would read the
    mask that ``visible_gpus`` reads itself)."""
    return len(glob.glob("/dev/nvidia[0-9]*"))


def place_local_ranks(*, ranks: int, backend: str, visible: list[str]) -> LocalDevices:
    """The ranks (``ranks``; 0: one per visible GPU, else ``CPU_RANKS``) on ``visible`` GPUs, for ``backend``
    auto, nccl or gloo."""
    gpus = len(visible)
    ranks = ranks or gpus or CPU_RANKS
    if backend == "gloo":
        return LocalDevices(ranks, "gloo", ("",) * ranks)
    if 0 < ranks <= gpus:
        return LocalDevices(ranks, "nccl", tuple(visible[:ranks]))
    if backend == "nccl":
        raise SettingError(
            f"{{k.backend}}=nccl gives every rank a GPU of its own, but {ranks} rank(s) meet {gpus} visible GPU(s); "
            f"start at most {gpus} ({{k.tasks_per_node}}={gpus}), or use {{k.backend}}=gloo"
            if gpus else "{k.backend}=nccl needs GPUs, and this machine shows none; use {k.backend}=gloo or auto")
    notice = "" if not gpus else (
        f"{ranks} rank(s) and {gpus} visible GPU(s): training on the CPU over gloo; start {gpus} rank(s) "
        f"({{k.tasks_per_node}}={gpus}, or 0 for one per GPU) to train on the GPU(s)")
    return LocalDevices(ranks, "gloo", ("",) * ranks, notice)
