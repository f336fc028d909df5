"""Checkpoint cost, one run: a synchronous save, the training stall of an asynchronous one, and the write
bandwidth against a raw write of the same bytes to the same disk.

One process (world size 1, gloo) saves a state of ``--mb`` MB of float32 tensors (a model's and its
optimizer's shapes: ``--tensors`` of equal size) through ``cluster.runtime.checkpoint_writer.CheckpointWriter``,
as a training run does (DCP, ``.partial`` folder, fsync, marker, rename). The raw write is the same
bytes in one ``write`` and an ``fsync`` to a file in the same folder. Rounds alternate raw, sync and
async; figures are medians with their spread.

Goals (issue 7): async stall <= 10% of the sync save; sync bandwidth >= 80% of the raw write.

    python -m tests.bench.checkpoint_io --mb 256 --rounds 5 [--dir /path/on/the/disk/to/measure]
"""

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist

from cluster.runtime.checkpoint_writer import CheckpointWriter

REPO = Path(__file__).resolve().parents[2]


def make_state(megabytes: int, tensors: int) -> dict[str, dict[str, torch.Tensor]]:
    per_tensor = megabytes * 2**20 // 4 // tensors
    half = tensors // 2
    return {"model": {f"layer{i}.weight": torch.randn(per_tensor) for i in range(half)},
            "optimizer": {f"layer{i}.momentum": torch.randn(per_tensor) for i in range(tensors - half)}}


def raw_write(state: dict[str, dict[str, torch.Tensor]], folder: Path) -> float:
    """Seconds to write the state's bytes to one file and fsync it."""
    data = b"".join(t.numpy().tobytes() for group in state.values() for t in group.values())
    path = folder / "raw.bin"
    started = time.perf_counter()
    with open(path, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    seconds = time.perf_counter() - started
    path.unlink()
    return seconds


def checkpoint(writer: CheckpointWriter, state: dict, step: int) -> tuple[float, float]:
    """(seconds the caller was held, seconds until the checkpoint was sealed)."""
    started = time.perf_counter()
    writer.save(state, step, {"bench": True})
    held = time.perf_counter() - started
    result = writer.close()
    assert result is not None and result.folder is not None, result
    return held, result.write_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mb", type=int, default=256, help="state size in MB")
    parser.add_argument("--tensors", type=int, default=16, help="tensors it is split in")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--dir", default=None, help="where to write (default: a temporary folder in $TMPDIR)")
    args = parser.parse_args()
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    state = make_state(args.mb, args.tensors)
    size = sum(t.numel() * t.element_size() for group in state.values() for t in group.values())
    figures: dict[str, list[float]] = {"raw write s": [], "sync save s": [], "async stall s": [], "async save s": []}
    with tempfile.TemporaryDirectory(prefix="checkpoint-bench-", dir=args.dir) as tmp:
        root = Path(tmp)
        sync = CheckpointWriter(root / "sync", rank=0, keep=1, background=False)
        background = CheckpointWriter(root / "async", rank=0, keep=1, background=True)
        for step in range(1, args.rounds + 1):
            figures["raw write s"].append(raw_write(state, root))
            figures["sync save s"].append(checkpoint(sync, state, step)[1])
            stall, write = checkpoint(background, state, step)
            figures["async stall s"].append(stall)
            figures["async save s"].append(write)
    dist.destroy_process_group()

    median = {name: statistics.median(values) for name, values in figures.items()}
    print(f"state {size / 2**20:.0f} MB in {args.tensors} tensors, {args.rounds} rounds, writing to "
          f"{args.dir or tempfile.gettempdir()}")
    for name, values in figures.items():
        print(f"{name:<16} {median[name]:8.3f}  ({min(values):.3f}-{max(values):.3f})")
    raw_bw, sync_bw = size / median["raw write s"] / 2**20, size / median["sync save s"] / 2**20
    print(f"bandwidth: raw {raw_bw:,.0f} MB/s, checkpoint {sync_bw:,.0f} MB/s: {sync_bw / raw_bw:.2f} of raw "
          "(goal >= 0.80)")
    print(f"async stall / sync save: {median['async stall s'] / median['sync save s']:.3f} (goal <= 0.10)")


if __name__ == "__main__":
    main()
