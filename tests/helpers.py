"""Helpers shared by the tests: run the real entry points as users do, read what they wrote, reach the
local Slurm cluster. Fixtures live in ``conftest.py``; tests import these functions from here."""

import json
import os
import subprocess
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import torch

from cluster.rundir import read_events
from cluster.runtime.checkpoint import read_whole

REPO = Path(__file__).resolve().parent.parent
# 2 ranks, 130-220 steps/s here and on the local cluster: long enough to interrupt (a preemption took ~2 s to
# arrive), short enough to wait for.
INTERRUPTIBLE_RUN = ("train.steps=1500", "train.global_batch_size=128", "train.log_every_steps=20",
                     "train.checkpoint_every_steps=500")


def run_train(*overrides: str, timeout: float = 300, check: bool = True, **popen) -> subprocess.CompletedProcess:
    """``python -m jobs.train OVERRIDES`` from the repository root, as a user would type it."""
    result = subprocess.run([sys.executable, "-m", "jobs.train", *overrides], cwd=REPO, capture_output=True,
                            text=True, timeout=timeout, **popen)
    if check and result.returncode != 0:
        raise AssertionError(f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}")
    return result


def read_summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def final_model(run_dir: Path) -> dict[str, torch.Tensor]:
    summary = read_summary(run_dir)
    return read_whole(Path(summary["last_checkpoint"]))["model"]


def slurm_required() -> bool:
    """In CI a missing Slurm fails the run; elsewhere its tests are skipped with the reason."""
    return os.environ.get("CI", "").lower() in ("1", "true") or os.environ.get("CLUSTERJOBS_REQUIRE_SLURM") == "1"


def squeue_ids(*, whole_arrays: bool = False) -> set[str]:
    """The jobs in Slurm's queue (an array by its array id with ``whole_arrays``, else each task). Compare what a
    test did as what is new (``after - before``): a job that ended just before may still leave it meanwhile."""
    out = subprocess.run(["squeue", "-h", "-o", "%F" if whole_arrays else "%i"], capture_output=True, text=True,
                         check=True).stdout
    return set(out.split())


def run_sweep(sweep_dir: Path, *overrides: str) -> tuple[subprocess.CompletedProcess, float]:
    """``python -m jobs.train -m OVERRIDES`` and the seconds until the prompt came back."""
    began = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "jobs.train", "-m", *overrides, f"hydra.sweep.dir={sweep_dir}"],
                            cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    return result, time.monotonic() - began


def cli(*args: str) -> subprocess.CompletedProcess:
    """``python -m cluster ARGS``."""
    return subprocess.run([sys.executable, "-m", "cluster", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=120)


def wait_done(sweep_dir: Path, *, timeout: float) -> dict:
    """``status --json`` once no member is pending or running (exit code 3 means some still are)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = cli("status", str(sweep_dir), "--json")
        if result.returncode != 3:
            return {"exit": result.returncode, **json.loads(result.stdout)}
        time.sleep(2)
    raise AssertionError(f"the sweep in {sweep_dir} did not end in {timeout:.0f} s:\n{result.stdout}")


def read_manifest(sweep_dir: Path) -> dict:
    return json.loads((sweep_dir / "manifest.json").read_text())


def in_background(work, *args, **kwargs) -> Future:
    """``work(*args, **kwargs)`` begun now in a thread of its own: a reference run computed while the test waits
    on Slurm's timers and requeues instead of before them (``.result()`` waits for it, and raises what it raised)."""
    pool = ThreadPoolExecutor(max_workers=1)
    try:
        return pool.submit(work, *args, **kwargs)
    finally:
        pool.shutdown(wait=False)


def wait_until(condition, *, timeout: float, what: str, poll: float = 0.2):
    """``condition()``'s first true value, asked every ``poll`` seconds; fails naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def last_step(run_dir: Path) -> int:
    """The last step a run logged to ``metrics.jsonl`` (0 before its first line)."""
    try:
        lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    except FileNotFoundError:
        return 0
    return json.loads(lines[-1])["step"] if lines else 0


def events_named(run_dir: Path, name: str) -> list[dict]:
    return [e for e in read_events(run_dir) if e["event"] == name]


def rank_pids(run_dir: Path) -> dict[int, int]:
    """rank -> pid of the training processes of a job whose logs are in ``run_dir`` (Slurm's or the local
    executor's)."""
    found = {}
    pattern = f"(submitit.core._submit|cluster.slurm.task_runner) {run_dir}"
    out = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True).stdout
    for pid in map(int, out.split()):
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            if Path(f"/proc/{pid}/comm").read_text().strip().startswith("python"):
                values = dict(item.decode().split("=", 1) for item in environ if b"=" in item)
                rank = values.get("SLURM_PROCID", values.get("SUBMITIT_LOCAL_GLOBALID"))
                if rank is not None:
                    found[int(rank)] = pid
        except (FileNotFoundError, ProcessLookupError):
            continue
    return found
