"""Checkpoints on disk: ``step-N`` folders, written atomically, loaded without running code.

Layout of one checkpoint (every file written by ``torch.save``, read with ``weights_only=True``)::

    checkpoints/step-000120/
        state.pt        what all ranks share (model, optimizer, scheduler, step, data position), rank 0
        rank-00000.pt   what each rank owns (its RNG states), one file per rank
        COMPLETE        JSON: step, world size, file sizes, the config it belongs to; written last

A folder is assembled as ``step-N.partial`` and renamed once ``COMPLETE`` is in it, so a folder named
``step-N`` without its marker, or with files of other sizes than the marker says, is never loaded.
The newest valid folder on disk is what a job resumes from (torchtitan's ``_find_load_step``).
"""

import hashlib
import json
import os
import re
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

MARKER = "COMPLETE"
SHARED_FILE = "state.pt"
_STEP_DIR = re.compile(r"^step-(\d+)$")


class CheckpointError(RuntimeError):
    """A checkpoint in the run directory cannot be used; the message says how to proceed."""


def step_dir(root: Path, step: int) -> Path:
    return root / f"step-{step:06d}"


def rank_file(rank: int) -> str:
    return f"rank-{rank:05d}.pt"


def list_checkpoints(root: Path) -> list[tuple[int, Path]]:
    """``(step, folder)`` for every complete checkpoint under ``root``, oldest first."""
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


def _save_file(obj: Any, path: Path) -> None:
    """``torch.save`` through a temporary name, flushed to disk before the rename."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as handle:
        torch.save(obj, handle)
        handle.flush()
        os.fsync(handle.fileno())
    tmp.replace(path)


def save_checkpoint(
    root: Path,
    step: int,
    *,
    rank: int,
    world_size: int,
    shared: Mapping[str, Any] | None,
    per_rank: Mapping[str, Any],
    meta: Mapping[str, Any],
    barrier: Callable[[], None],
) -> Path:
    """Write one checkpoint together with the other ranks; every rank calls this.

    ``shared`` is written by rank 0 only (pass None elsewhere); ``meta`` (JSON-able) goes into the
    marker so that compatibility can be checked without unpickling anything.
    """
    final = step_dir(root, step)
    partial = final.with_name(final.name + ".partial")
    if rank == 0:
        # A partial folder is what a killed writer left behind: never valid, safe to drop.
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
    barrier()
    _save_file(dict(per_rank), partial / rank_file(rank))
    if rank == 0:
        _save_file(dict(shared or {}), partial / SHARED_FILE)
    barrier()
    if rank == 0:
        sizes = {child.name: child.stat().st_size for child in sorted(partial.iterdir())}
        marker = {"step": step, "world_size": world_size, "files": sizes, **meta}
        if "config" in meta:
            marker["fingerprint"] = config_digest(meta["config"])
        with open(partial / MARKER, "w") as handle:
            json.dump(marker, handle, indent=1, sort_keys=True)
            handle.flush()
            os.fsync(handle.fileno())
        if final.exists():  # the same step saved again (a resumed run ending where it resumed)
            shutil.rmtree(final)
        partial.rename(final)
    return final


def read_marker(folder: Path) -> dict[str, Any]:
    """The marker of a checkpoint, after checking that every file it lists is whole."""
    hint = f"move {folder} out of the way to resume from the checkpoint before it, or start a new run directory"
    try:
        marker = json.loads((folder / MARKER).read_text())
        sizes = marker["files"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise CheckpointError(f"checkpoint {folder} has an unreadable {MARKER} marker ({error}); {hint}") from error
    for name, size in sizes.items():
        path = folder / name
        actual = path.stat().st_size if path.is_file() else None
        if actual != size:
            found = "missing" if actual is None else f"{actual} bytes"
            raise CheckpointError(f"checkpoint {folder} is corrupt: {name} is {found}, expected {size} bytes; {hint}")
    return marker


def load_file(path: Path) -> dict[str, Any]:
    """Load one checkpoint file onto the CPU, refusing anything but tensors and plain containers."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for a damaged zip or a forbidden global
        raise CheckpointError(
            f"checkpoint file {path} cannot be loaded ({type(error).__name__}: {str(error).splitlines()[0]}); "
            f"move {path.parent} out of the way to resume from the checkpoint before it"
        ) from error


def check_compatible(saved: Any, config: Mapping[str, Any], *, folder: Path) -> None:
    """Refuse a checkpoint whose saved configuration differs from ``config``, naming what differs."""
    if saved == config:
        return
    if not isinstance(saved, Mapping):
        raise CheckpointError(f"checkpoint {folder} does not record its configuration; start a new run directory")
    changed = sorted(key for key in set(saved) | set(config) if saved.get(key) != config.get(key))
    details = ", ".join(f"{key}: {saved.get(key)!r} -> {config.get(key)!r}" for key in changed)
    raise CheckpointError(
        f"checkpoint {folder} belongs to another configuration ({details}); "
        "run with the same settings to resume, or choose a new run directory (hydra.run.dir=...)"
    )


def config_digest(config: Mapping[str, Any]) -> str:
    """A short, stable hash of a JSON-able configuration (the fingerprint shown in markers)."""
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]


def prune_checkpoints(root: Path, keep: int) -> None:
    """Delete all but the newest ``keep`` complete checkpoints."""
    for _, folder in list_checkpoints(root)[:-keep]:
        shutil.rmtree(folder, ignore_errors=True)
