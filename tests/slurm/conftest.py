"""Fixtures of the Slurm tests."""

import pytest

from tests.helpers import read_summary, run_train


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
