"""Write checkpoints in the background while training goes on: at most one in flight.

The training thread only copies the state (``stage``) and hands it to a writer thread, which runs
DCP over a process group of its own (gloo), so its collectives never interleave with training's.
A failed write (disk full, permissions) leaves only a ``.partial`` folder, which is removed: the
previous checkpoint stays the newest valid one, and the error is reported, not raised into training.
A save is not even tried when the filesystem visibly lacks the room for it. Training that cannot be
saved is not worth going on with: after ``MAX_FAILURES_IN_A_ROW`` failed saves, the next ``save``
raises ``SaveFailedError`` with the reason, and so does ``check_last`` after a failed final save.
"""

import dataclasses
import shutil
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from cluster.errors import ClusterError, literal, one_line
from cluster.runtime.checkpoint import (
    list_checkpoints,
    partial_dir,
    prune_checkpoints,
    seal,
    step_dir,
    write_state,
)

MAX_FAILURES_IN_A_ROW = 3
_MB = 1 << 20


class SaveFailedError(ClusterError, RuntimeError):
    """Checkpoints cannot be written: going on would train for nothing (a retry would meet the same disk)."""


@dataclasses.dataclass(frozen=True)
class SaveResult:
    """How one save ended (the same on every rank)."""

    step: int
    folder: Path | None  # the sealed checkpoint; None when the write failed
    stall_s: float  # seconds the training thread was held (copying the state, waiting for the previous save)
    write_s: float  # seconds from the start of the save to its end
    error: str = ""  # why the write failed ("" when it did not)


def stage(value: Any, reuse: Any = None) -> Any:
    """A copy of ``value`` that later training steps cannot change: tensors copied to CPU memory.

    Tensors of ``reuse`` (the previous save's copy, whose write has ended) are overwritten where shape
    and dtype match: fresh memory costs a page fault per page, which made the copy 2-3x slower.
    """
    if isinstance(value, torch.Tensor):
        if isinstance(reuse, torch.Tensor) and reuse.shape == value.shape and reuse.dtype == value.dtype:
            return reuse.copy_(value.detach())
        return value.detach().to("cpu", copy=True)
    if isinstance(value, Mapping):
        before: Mapping[Any, Any] = reuse if isinstance(reuse, Mapping) else {}
        return {key: stage(item, before.get(key)) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        old = reuse if isinstance(reuse, (list, tuple)) and len(reuse) == len(value) else [None] * len(value)
        return type(value)(stage(item, previous) for item, previous in zip(value, old))
    return value


class CheckpointWriter:
    """Saves ``step-N`` checkpoints under ``root`` with every rank; all ranks call every method."""

    def __init__(self, root: Path, *, rank: int, keep: int, background: bool,
                 on_done: Callable[[SaveResult], None] = lambda result: None):
        self.root, self.rank, self.keep, self.background = root, rank, keep, background
        self.on_done = on_done  # called on every rank when a save ends (events, warnings)
        # DCP's plan exchange runs on a group of its own, so a background save never races training's collectives.
        group = dist.new_group(backend="gloo")
        assert isinstance(group, dist.ProcessGroup)  # every rank is a member
        self.group: dist.ProcessGroup = group
        # A daemon thread, not an executor: a rank that must exit (a dead peer) is not held by a stuck save.
        self._thread: threading.Thread | None = None
        self._outcome: list[SaveResult] = []
        # The last background save's copy of the state, reused by the next: it stays allocated between
        # saves (one state's worth of host memory), as the staging buffers of torch's async_save do.
        self._staged: Any = None
        self.last: SaveResult | None = None
        self.failures_in_a_row = 0  # the same on every rank: each save's outcome is agreed (``_write``)

    def save(self, state: Mapping[str, Any], step: int, meta: Mapping[str, Any]) -> None:
        """Start saving ``state`` as step ``step``; in the background unless configured otherwise."""
        started = time.perf_counter()
        self.close()  # at most one save in flight: the previous copy is free again
        if self.failures_in_a_row >= MAX_FAILURES_IN_A_ROW and self.last is not None:
            raise SaveFailedError(f"{self.failures_in_a_row} checkpoints in a row could not be written, the last at "
                                  f"step {self.last.step} ({literal(self.last.error)}); the run stops rather than "
                                  "train what it cannot save: free space or fix the directory, then run again")
        staged = self._staged = stage(state, self._staged) if self.background else state
        stall = time.perf_counter() - started
        if not self.background:
            result = self._write(staged, step, meta, started, stall)
            self._finish(dataclasses.replace(result, stall_s=result.write_s))  # training waited for all of it
            return
        self._thread = threading.Thread(
            target=lambda: self._outcome.append(self._write(staged, step, meta, started, stall)),
            name=f"checkpoint-{step}", daemon=True)
        self._thread.start()

    def check_last(self) -> None:
        """Raise ``SaveFailedError`` when the last save (the final one, say) failed: the training since the
        checkpoint before it exists nowhere."""
        last = self.close()
        if last is not None and last.error:
            raise SaveFailedError(f"the checkpoint at step {last.step} could not be written ({literal(last.error)}); "
                                  "the training since the checkpoint before it exists nowhere else: free space or "
                                  "fix the directory, then run the same command again to redo it")

    def close(self) -> SaveResult | None:
        """Wait until the save in flight (if any) has ended; the last save's result."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
            self._finish(self._outcome.pop())
        return self.last

    def _write(self, state: Mapping[str, Any], step: int, meta: Mapping[str, Any], started: float,
               stall: float) -> SaveResult:
        partial = partial_dir(self.root, step)
        # Rank 0 looks for the room first, and every rank learns its verdict: all of them write, or none does.
        verdict = [self._room_for(state) if self.rank == 0 else ""]
        dist.broadcast_object_list(verdict, src=0, group=self.group)
        if verdict[0]:
            return self._failed(step, verdict[0], started, stall)
        try:
            write_state(state, partial, process_group=self.group)
            folder = seal(partial, step_dir(self.root, step), {"step": step, **meta}) if self.rank == 0 else None
            error = ""
        except Exception as failure:  # DCP raises the first failing rank's error on every rank
            folder, error = None, (f"{one_line(failure)}; writing {partial} ({self._free_mb():.1f} MB free there): "
                                   "check the free space, quota and permissions there")
        # Every rank learns whether rank 0 sealed it: a failure on rank 0 alone is a failure for all.
        sealed = [folder is not None if self.rank == 0 else None]
        dist.broadcast_object_list(sealed, src=0, group=self.group)
        if not sealed[0]:
            error = error or "rank 0 could not seal the checkpoint"
            if self.rank == 0:
                shutil.rmtree(partial, ignore_errors=True)
            folder = None
        elif self.rank == 0:
            prune_checkpoints(self.root, self.keep)
        final = folder if self.rank == 0 else (step_dir(self.root, step) if sealed[0] else None)
        return SaveResult(step=step, folder=final, stall_s=stall, write_s=time.perf_counter() - started, error=error)

    def _room_for(self, state: Mapping[str, Any]) -> str:
        """Why a save of ``state`` would not fit on the filesystem, or "": it needs what the newest checkpoint
        took (or this rank's share of the state, before the first one), and the older ones are only pruned
        after it is written."""
        newest = list_checkpoints(self.root)
        needed = (sum(f.stat().st_size for f in newest[-1][1].iterdir() if f.is_file()) if newest
                  else _nbytes(state))
        free = self._free_mb() * _MB
        if free >= needed * 1.05 + _MB / 4:  # a little room for the marker, the events and the metrics
            return ""
        return (f"not tried: it needs about {needed / _MB:.1f} MB and {free / _MB:.1f} MB are free at {self.root} "
                f"(the {self.keep} kept checkpoint(s) are pruned only after a new one is complete)")

    def _free_mb(self) -> float:
        self.root.mkdir(parents=True, exist_ok=True)
        return shutil.disk_usage(self.root).free / _MB

    def _failed(self, step: int, error: str, started: float, stall: float) -> SaveResult:
        return SaveResult(step=step, folder=None, stall_s=stall, write_s=time.perf_counter() - started, error=error)

    def _finish(self, result: SaveResult) -> None:
        self.failures_in_a_row = self.failures_in_a_row + 1 if result.error else 0
        self.last = result
        self.on_done(result)


def _nbytes(value: Any) -> int:
    """Bytes of the tensors in ``value`` (nested mappings and sequences)."""
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, Mapping):
        return sum(_nbytes(item) for item in value.values())
    if isinstance(value, (list, tuple)):
        return sum(_nbytes(item) for item in value)
    return 0
