"""Fixtures of the whole suite (helpers to import are in ``tests/helpers.py``)."""

import os
import shutil
import subprocess
from concurrent.futures import Future

import pytest

from tests.helpers import REPO, in_background, read_summary, run_train, slurm_required


@pytest.hookimpl(optionalhook=True)  # a hook of pytest-xdist, there when it is installed
def pytest_xdist_make_scheduler(config, log):
    """The workers of ``addopts``: the Slurm tests one after another in one of them, from the start (the
    longest chain), while the others run the rest and fill their waits (Slurm's timers, requeues, timeouts)."""
    from tests.xdist_scheduling import SlurmTestsTogether

    return SlurmTestsTogether(config, log)


@pytest.fixture(autouse=True)
def history_of_its_own(tmp_path_factory, monkeypatch):
    """Submissions made by a test (and the processes it starts) are listed in a history file of the test's own
    (``cluster.history``), not in the user's ~/.local/state."""
    monkeypatch.setenv("CLUSTERJOBS_HISTORY", str(tmp_path_factory.mktemp("history") / "history.jsonl"))


@pytest.fixture(autouse=True)
def cpu_tests_see_no_gpu(request, monkeypatch):
    """Every test but a ``gpu`` one runs on the CPU (gloo), with or without a GPU in the machine: backend
    ``auto`` would otherwise pick NCCL there, and exact comparisons would meet GPU non-determinism. The
    variable reaches every process a test starts, local ranks and Slurm tasks alike."""
    if request.node.get_closest_marker("gpu") is None:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")


@pytest.fixture
def cpu_only_env():
    """Environment for a child run: no launcher variables leaking in from the test's own process."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SUBMITIT_", "TORCHELASTIC_"))
            and k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}


@pytest.fixture(scope="session")
def slurm_cluster():
    """The local Slurm cluster (slurm/local-cluster), started if it is not running."""
    answers = shutil.which("scontrol") and subprocess.run(["scontrol", "ping"], capture_output=True).returncode == 0
    if not answers:
        script = REPO / "slurm" / "local-cluster"
        reason = None
        if shutil.which("slurmctld") is None:
            reason = "Slurm is not installed: run slurm/local-cluster install"
        elif os.geteuid() != 0:
            reason = "starting the local Slurm cluster needs root"
        else:
            started = subprocess.run([str(script), "up"], capture_output=True, text=True, timeout=180)
            if started.returncode != 0:
                reason = f"slurm/local-cluster up failed:\n{started.stdout}\n{started.stderr}"
        if reason is not None:
            if slurm_required():
                pytest.fail(reason)
            pytest.skip(reason)
    return {"partition": "debug", "high_partition": "high", "nodes": 4}


@pytest.fixture(scope="session")
def reference(tmp_path_factory):
    """Digests of uninterrupted runs on local ranks (2 by default), each computed once (in each xdist worker) for
    all the tests that ask. The run begins when a test first asks, in the background: a test asks as it starts
    and reads the digest (``.result()``) at its end, so the run overlaps what the test waits for."""
    cache: dict[tuple[object, ...], Future[str]] = {}

    def compute(overrides: tuple[str, ...], ranks: int) -> str:
        run_dir = tmp_path_factory.mktemp("reference")
        run_train(*overrides, f"cluster.tasks_per_node={ranks}", f"hydra.run.dir={run_dir}", timeout=600)
        return read_summary(run_dir)["param_digest"]

    def digest(*overrides: str, ranks: int = 2) -> Future[str]:
        key = (*overrides, ranks)
        if key not in cache:
            cache[key] = in_background(compute, overrides, ranks)
        return cache[key]

    return digest
