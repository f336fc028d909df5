"""clusterjobs: PyTorch distributed training from a laptop to a Slurm cluster, and kept alive there.

The library. Everything here but ``cluster.runtime`` is torch-free (a login node runs it); ``cluster.runtime``
is what each rank runs. It never imports Hydra or the built-in trainer (``jobs``). README: Architecture.

The public API for your own training loop (README: "Your own code"), importable from here::

    import cluster
    with cluster.start("runs/exp1") as job:   # cluster.Job
        ...

``import cluster`` stays torch-free: these names are imported on first use.
"""

import importlib
from typing import Any

# public name -> the module that owns it
_PUBLIC = {
    "start": "cluster.runtime.job",
    "Job": "cluster.runtime.job",
    "ResumableLoader": "cluster.runtime.loader",
    "EvalLoader": "cluster.runtime.loader",
    "settle_buckets": "cluster.runtime.ddp",
    "seed_everything": "cluster.runtime.rng",
    "RequeueBudget": "cluster.requeue",
    "EXIT_REQUEUE": "cluster.requeue",
    "TaskEnvironment": "cluster.environment",
    "detect_environment": "cluster.environment",
}
__all__ = sorted(_PUBLIC)


def __getattr__(name: str) -> Any:
    if name not in _PUBLIC:
        raise AttributeError(f"module 'cluster' has no attribute {name!r}")
    return getattr(importlib.import_module(_PUBLIC[name]), name)
