"""What a user of ``python -m jobs.train`` is told when their input cannot work: one line, the fix in
config keys, exit code 2 (1 for a run that failed), no traceback.

The library names settings by its own names (``cluster.errors``: ``partition``, ``pp``, ``run_dir``);
``CONFIG_KEYS`` says which config key each of them is in this trainer.
"""

import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path

from cluster.environment import HalfSetEnvironmentError
from cluster.errors import ClusterError, RunDirectoryBusyError, spelled
from cluster.local.ranks import TaskFailedError
from cluster.requeue import RequeueBudget
from cluster.rundir import remove_if_unused
from cluster.slurm.resources import SlurmResources

CONFIG_KEYS: dict[str, str] = {
    **{field: f"cluster.{field}" for field in SlurmResources.__dataclass_fields__},
    "run_dir": "hydra.run.dir",
    "sweep_dir": "hydra.sweep.dir",
    "allow_changes": "train.allow_changes",
    "global_batch_size": "train.global_batch_size",
    "micro_batch_size": "train.micro_batch_size",
    "pp": "strategy.pp",
    "microbatches": "strategy.microbatches",
    "stages_per_rank": "strategy.stages_per_rank",
    "model": "model=transformer, model=cnn, or strategy.split_points for your own",
    "split_points": "strategy.split_points",
    "num_workers": "train.num_workers",
    "depth": "model.depth",
    "backend": "distributed.backend",
    **{field: f"requeue.{field}" for field in RequeueBudget.__dataclass_fields__},
}

# What Hydra writes into a run directory before the task starts: its record of the config, and the job's log.
HYDRA_FILES = (".hydra", "train.log")
# Errors that mean "fix your input": one line and exit code 2.
USER_ERRORS = (ValueError, FileNotFoundError, PermissionError, ClusterError, HalfSetEnvironmentError)


def config_key(name: str) -> str:
    """The config key of a setting the library names ``name``."""
    return CONFIG_KEYS.get(name, name)


def phrase(template: str) -> str:
    """A library message template (``cluster.errors``) with its settings spelled as config keys."""
    return spelled(template, config_key)


def describe(error: BaseException) -> str:
    """The error's message, with the library's setting names spelled as config keys."""
    return error.phrase(config_key) if isinstance(error, ClusterError) else str(error)


@contextlib.contextmanager
def exit_on_user_error(run_dir: Path | None = None) -> Iterator[None]:
    """One line and the exit code for what the user must fix; ``run_dir``, made for this command, is removed
    when nothing trained in it (a refused run leaves nothing behind)."""
    try:
        yield
    except USER_ERRORS as error:
        print(f"error: {describe(error)}", file=sys.stderr)
        if run_dir is not None and not isinstance(error, RunDirectoryBusyError):  # the other run's, then
            remove_if_unused(run_dir, also=HYDRA_FILES)
        sys.exit(2)
    except TaskFailedError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)
