"""Where training numbers go: ``metrics.jsonl`` (and TensorBoard when installed), and the screen.

On a terminal the screen gets one progress line that redraws itself; anywhere else (a Slurm log,
a submitit log file, a pipe) it gets one plain line per record, so logs stay greppable.
"""

import json
import os
import sys
from pathlib import Path
from typing import Any, TextIO

from cluster.rundir import RunDir, read_jsonl, write_atomically


class ProgressLine:
    """Renders step records for a human: a redrawn bar on a terminal, plain lines elsewhere."""

    def __init__(self, total_steps: int, stream: TextIO = sys.stdout):
        self.total_steps = total_steps
        self.stream = stream
        self.interactive = stream.isatty()

    def show(self, record: dict[str, Any]) -> None:
        step, loss, rate = record["step"], record["loss"], record["samples_per_s"]
        text = f"step {step}/{self.total_steps}  loss {loss:.4f}  {rate:,.0f} samples/s"
        if "val_loss" in record:
            text += f"  val_loss {record['val_loss']:.4f}"
        if self.interactive:
            done = int(30 * step / self.total_steps)
            self.stream.write(f"\r[{'#' * done}{'.' * (30 - done)}] {text}\x1b[K")
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.interactive:
            self.stream.write("\n")
            self.stream.flush()


class MetricsLog:
    """Appends records to ``metrics.jsonl``; written by rank 0 only."""

    def __init__(self, run_dir: Path, *, resumed_step: int):
        self.path = RunDir(run_dir).metrics
        _drop_records_after(self.path, resumed_step)
        self.handle = open(self.path, "a")
        self.tensorboard = _tensorboard_writer(RunDir(run_dir).tensorboard)

    def write(self, record: dict[str, Any]) -> None:
        self.handle.write(json.dumps(record) + "\n")
        self.handle.flush()
        if self.tensorboard is not None:
            for key, value in record.items():
                if key not in ("step", "time") and isinstance(value, (int, float)):
                    tag = f"val/{key[4:]}" if key.startswith("val_") else f"train/{key}"
                    self.tensorboard.add_scalar(tag, value, record["step"], walltime=record.get("time"))

    def close(self) -> None:
        self.handle.close()
        if self.tensorboard is not None:
            self.tensorboard.close()


def _drop_records_after(path: Path, step: int) -> None:
    """A resumed run repeats the steps after its checkpoint: drop their old records first."""
    if not path.exists():
        return
    kept = [record for record in read_jsonl(path) if record["step"] <= step]
    write_atomically(path, "".join(json.dumps(record) + "\n" for record in kept))


def _tensorboard_writer(folder: Path) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is optional
        return None
    return SummaryWriter(str(folder))


class MetricsFollower:
    """Reads the records rank 0 appends to ``metrics.jsonl``, for a launcher showing progress."""

    def __init__(self, run_dir: Path, progress: ProgressLine):
        self.path = RunDir(run_dir).metrics
        self.progress = progress
        self.offset = 0
        self.inode = -1

    def poll(self) -> None:
        try:
            handle = open(self.path, "rb")
        except FileNotFoundError:
            return
        with handle:
            inode = os.fstat(handle.fileno()).st_ino
            if inode != self.inode:  # rewritten by a resuming rank 0: read it from the start
                self.inode, self.offset = inode, 0
            handle.seek(self.offset)
            chunk = handle.read()
        complete = chunk[: chunk.rfind(b"\n") + 1]  # a line still being written waits for the next poll
        self.offset += len(complete)
        for line in complete.decode().splitlines():
            self.progress.show(json.loads(line))
