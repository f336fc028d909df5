"""Helpers shared by the tests: run the real entry points as users do, read what they wrote, reach the
local Slurm cluster. Fixtures live in ``conftest.py``; tests import these functions from here."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

from cluster.runtime.checkpoint import read_whole

REPO = Path(__file__).resolve().parent.parent


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
