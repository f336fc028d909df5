"""Checkpoints on disk: ``step-N`` folders in the ``torch.distributed.checkpoint`` (DCP) layout,
made valid by a completeness marker, read without running code.

Layout of one checkpoint::

    checkpoints/step-000120/
        .metadata        DCP's index of every tensor and object (written by rank 0)
        __R_0.distcp     DCP's data, one file per rank (sharded strategies write their shards)
        COMPLETE         JSON: step, world size, layout, config, file sizes; written last

All ranks write into ``step-N.partial``; once DCP reports every rank done, rank 0 writes
``COMPLETE`` and renames the folder. A folder named ``step-N`` without its marker, or with files of
other sizes than the marker lists, is never loaded. The newest valid folder on disk is what a job
resumes from (torchtitan's ``_find_load_step``), never a path stored in a pickle.

DCP reads its ``.metadata`` with ``pickle`` and non-tensor values with ``torch.load(weights_only=False)``;
``SafeReader`` and ``SafeLoadPlanner`` refuse anything but DCP's own records, tensors and plain containers.
"""

import contextlib
import hashlib
import io
import json
import os
import pickle
import re
import shutil
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import FileSystemReader, FileSystemWriter
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner

from cluster.errors import CheckpointError, literal, one_line
from cluster.runtime.dcp_compat import METADATA_FUNCTIONS, WholeStateLoadPlanner, load_whole

MARKER = "COMPLETE"
PARTIAL_SUFFIX = ".partial"
_STEP_DIR = re.compile(r"^step-(\d+)$")


def step_dir(root: Path, step: int) -> Path:
    return root / f"step-{step:06d}"


def partial_dir(root: Path, step: int) -> Path:
    return root / f"step-{step:06d}{PARTIAL_SUFFIX}"


def list_checkpoints(root: Path) -> list[tuple[int, Path]]:
    """``(step, folder)`` for every checkpoint under ``root`` that has its marker, oldest first."""
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        match = _STEP_DIR.match(child.name)
        if match and (child / MARKER).is_file():
            found.append((int(match[1]), child))
    return sorted(found)


def latest_checkpoint(root: Path) -> Path | None:
    """The newest complete checkpoint under ``root``, or None."""
    found = list_checkpoints(root)
    return found[-1][1] if found else None


def remove_partials(root: Path) -> list[Path]:
    """Delete what killed writers left (``*.partial``); never valid, so always safe to drop."""
    removed = sorted(root.glob(f"step-*{PARTIAL_SUFFIX}")) if root.is_dir() else []
    for folder in removed:
        shutil.rmtree(folder, ignore_errors=True)
    return removed


def first_failure(error: CheckpointException) -> BaseException:
    """The first rank's own exception inside DCP's ``CheckpointException`` (a ``BaseException``)."""
    for failure in error.failures.values():
        return failure[0] if isinstance(failure, tuple) else failure
    return error


def write_state(state: Mapping[str, Any], folder: Path, *, process_group: dist.ProcessGroup | None) -> None:
    """Every rank writes its part of ``state`` into ``folder`` (DCP); returns once all ranks have.

    Raises the first failing rank's error on every rank.
    """
    try:
        dcp.save(dict(state), storage_writer=FileSystemWriter(str(folder)), process_group=process_group)
    except CheckpointException as error:
        raise first_failure(error) from None


def seal(folder: Path, final: Path, meta: Mapping[str, Any]) -> Path:
    """Write the marker (with every file's size) into a fully written ``folder``, then rename it to ``final``."""
    sizes = {child.name: child.stat().st_size for child in sorted(folder.iterdir()) if child.is_file()}
    marker = {"files": sizes, **meta}
    if "config" in meta:
        marker["fingerprint"] = config_digest(meta["config"])
    with open(folder / MARKER, "w") as handle:
        json.dump(marker, handle, indent=1, sort_keys=True)
        handle.flush()
        os.fsync(handle.fileno())
    if final.exists():  # the same step saved again (a resumed run ending where it resumed)
        shutil.rmtree(final)
    folder.rename(final)
    _fsync_dir(final.parent)
    return final


def _fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_marker(folder: Path) -> dict[str, Any]:
    """The marker of a checkpoint, after checking that every file it lists is whole."""
    where = literal(str(folder))
    hint = (f"move {where} out of the way to resume from the checkpoint before it, or start a new run directory "
            "({k.run_dir}=...)")
    try:
        marker = json.loads((folder / MARKER).read_text())
        sizes = marker["files"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise CheckpointError(f"checkpoint {where} has an unreadable {MARKER} marker ({literal(str(error))}); "
                              f"{hint}") from error
    for name, size in sizes.items():
        path = folder / name
        actual = path.stat().st_size if path.is_file() else None
        if actual != size:
            found = "missing" if actual is None else f"{actual} bytes"
            raise CheckpointError(f"checkpoint {where} is corrupt: {literal(name)} is {found}, expected {size} bytes; "
                                  f"{hint}")
    return marker


# What DCP's .metadata may name: its own record classes, paths, and torch's dtypes and sizes.
_METADATA_MODULES = ("torch.distributed.checkpoint.", "pathlib")


class _MetadataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        found = super().find_class(module, name)
        if (module, name) in METADATA_FUNCTIONS or isinstance(found, torch.dtype):
            return found
        if module.startswith(_METADATA_MODULES) and isinstance(found, type):
            return found
        raise pickle.UnpicklingError(f"{module}.{name} is not part of a DCP index")


class SafeReader(FileSystemReader):
    """DCP's file reader, with an index that may hold DCP's records but no code."""

    def read_metadata(self, *args: Any, **kwargs: Any) -> Any:
        path = Path(self.path) / ".metadata"
        try:
            with open(path, "rb") as handle:
                metadata = _MetadataUnpickler(handle).load()
        except Exception as error:
            raise CheckpointError(f"checkpoint index {literal(str(path))} cannot be read ({type(error).__name__}: "
                                  f"{literal(str(error))}); move {literal(str(path.parent))} out of the way to resume "
                                  "from the checkpoint before it") from error
        if getattr(metadata, "storage_meta", None) is not None:
            metadata.storage_meta.load_id = self.load_id
        return metadata


class _WeightsOnlyBytes:
    """Non-tensor values (step counts, RNG states, optimizer settings) must pass ``weights_only``
    before DCP's own ``torch.load(weights_only=False)`` sees them."""

    def load_bytes(self, read_item: Any, value: io.BytesIO) -> None:
        try:
            torch.load(value, weights_only=True)
        except Exception as error:
            raise CheckpointError(f"checkpoint value {literal(read_item.dest_index.fqn)} holds more than tensors and "
                                  f"plain containers ({type(error).__name__}); it was not written by clusterjobs"
                                  ) from error
        value.seek(0)
        super().load_bytes(read_item, value)  # type: ignore[misc]


class SafeLoadPlanner(_WeightsOnlyBytes, DefaultLoadPlanner):
    """Loads into a template state dict, as DCP's default planner does."""


class _SafeWholeLoadPlanner(_WeightsOnlyBytes, WholeStateLoadPlanner):
    """Loads everything a checkpoint holds, without a template (DCP's ``dcp_to_torch_save`` planner)."""


def saved_keys(folder: Path) -> set[str]:
    """The flattened keys a checkpoint holds (``rng-rank-00000.cuda.0``, ...), from its index."""
    return set(SafeReader(str(folder)).read_metadata().state_dict_metadata)


def read_state(state: dict[str, Any], folder: Path, *, process_group: dist.ProcessGroup | None) -> None:
    """Fill ``state`` (a template: the keys and tensor shapes to load) from a checkpoint, in place."""
    with _reading(folder):
        dcp.load(state, storage_reader=SafeReader(str(folder)), planner=SafeLoadPlanner(), process_group=process_group)


def read_whole(folder: Path) -> dict[str, Any]:
    """Everything in a checkpoint as plain tensors and values, in this one process (tools, tests)."""
    state: dict[str, Any] = {}
    # dcp.load keeps only the keys its argument had; DCP's own dcp_to_torch_save calls the inner loader.
    with _reading(folder):
        load_whole(state, storage_reader=SafeReader(str(folder)), planner=_SafeWholeLoadPlanner())
    return state


@contextlib.contextmanager
def _reading(folder: Path) -> Iterator[None]:
    """DCP's errors (``BaseException``s wrapping each rank's) as one ``CheckpointError`` that says what to do."""
    try:
        yield
    except CheckpointException as error:
        cause = first_failure(error)
        if isinstance(cause, CheckpointError):
            raise cause from None
        raise CheckpointError(f"checkpoint {literal(str(folder))} cannot be loaded ({literal(one_line(cause))}); "
                              f"move {literal(str(folder))} out of the way to resume from the checkpoint before it"
                              ) from None


def check_compatible(saved: Any, current: Mapping[str, Any], *, folder: Path, allowed: tuple[str, ...] = ()) -> None:
    """Refuse a checkpoint whose saved fingerprint differs from ``current`` in a key not in ``allowed``."""
    if not isinstance(saved, Mapping):
        raise CheckpointError(f"checkpoint {literal(str(folder))} does not record its configuration; "
                              "start a new {k.run_dir}")
    changed = sorted(key for key in set(saved) | set(current) if saved.get(key) != current.get(key))
    refused = [key for key in changed if key not in allowed]
    if not refused:
        return
    details = ", ".join(f"{key}: {saved.get(key)!r} -> {current.get(key)!r}" for key in refused)
    raise CheckpointError(
        f"checkpoint {literal(str(folder))} belongs to another configuration or layout ({literal(details)}); run with "
        f"the same settings to resume, allow the change with {{k.allow_changes}}=[{literal(','.join(refused))}], "
        "or choose a new run directory ({k.run_dir}=...)"
    )


def config_digest(config: Mapping[str, Any]) -> str:
    """A short, stable hash of a JSON-able configuration (the fingerprint shown in markers)."""
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]


def prune_checkpoints(root: Path, keep: int) -> None:
    """Delete all but the newest ``keep`` complete checkpoints."""
    for _, folder in list_checkpoints(root)[:-keep]:
        shutil.rmtree(folder, ignore_errors=True)
