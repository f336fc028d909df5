"""Helpers shared by the tests: run the real entry point as users do."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

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
    return torch.load(Path(summary["last_checkpoint"]) / "state.pt", weights_only=True)["model"]


@pytest.fixture
def cpu_only_env():
    """Environment for a child run: no launcher variables leaking in from the test's own process."""
    return {k: v for k, v in os.environ.items()
            if not k.startswith(("SLURM_", "SUBMITIT_", "TORCHELASTIC_")) and k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
