"""Fixtures of the Slurm tests."""

import subprocess

import pytest

from tests.helpers import squeue_ids


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
