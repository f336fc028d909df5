"""Fixtures of the Slurm tests."""

import subprocess

import pytest

from tests.helpers import read_summary, run_train, squeue_ids


@pytest.fixture(scope="session")
def reference(tmp_path_factory):
    """Digests of uninterrupted runs on local ranks (2 by default, as many as 2 Slurm nodes x 1 task), each
    computed once for all the Slurm tests that ask."""
    cache: dict[tuple[object, ...], str] = {}

    def digest(*overrides: str, ranks: int = 2) -> str:
        key = (*overrides, ranks)
        if key not in cache:
            run_dir = tmp_path_factory.mktemp("reference")
            run_train(*overrides, f"cluster.tasks_per_node={ranks}", f"hydra.run.dir={run_dir}", timeout=600)
            cache[key] = read_summary(run_dir)["param_digest"]
        return cache[key]

    return digest


def queued_jobs() -> set[str]:
    """Whole jobs and arrays in Slurm's queue; none when Slurm does not answer (not started yet, say)."""
    try:
        return squeue_ids(whole_arrays=True)
    except subprocess.CalledProcessError:
        return set()


@pytest.fixture(autouse=True)
def cancel_the_jobs_a_test_leaves():
    """Whatever a test submitted and left in the queue (it failed before its jobs ended, or does not wait for
    them) is cancelled as it ends: those jobs would hold the slots the next tests wait for."""
    before = queued_jobs()
    yield
    left = queued_jobs() - before
    if left:
        subprocess.run(["scancel", *sorted(left, key=int)], check=False)
