"""Train a model from a Hydra config: ``python -m jobs.train [overrides]``.

Parse, plan, launch, report; the work is in ``jobs.launchers`` and ``jobs.loop``.
"""

import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from cluster.environment import HalfSetEnvironmentError
from cluster.errors import CheckpointError
from cluster.launch import TaskFailedError
from cluster.rundir import RunDirectoryBusyError
from cluster.slurm_limits import SlurmUnavailableError
from jobs.config import plan_from_config

# Errors that mean "fix your input": one line and exit code 2, no traceback.
USER_ERRORS = (ValueError, FileNotFoundError, PermissionError, CheckpointError, HalfSetEnvironmentError,
               RunDirectoryBusyError, SlurmUnavailableError)


@contextlib.contextmanager
def exit_on_user_error() -> Iterator[None]:
    try:
        yield
    except USER_ERRORS as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    except TaskFailedError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)


def print_summary(summary: dict[str, Any]) -> None:
    print(
        f"done: {summary['steps']} steps, final loss {summary['final_loss']:.4f}, "
        f"{summary['samples_per_s']:,.0f} samples/s on {summary['world_size']} rank(s)\n"
        f"param digest: {summary['param_digest']}\n"
        f"run dir: {summary['run_dir']} (summary.json, metrics.jsonl, checkpoints/)"
    )


@hydra.main(version_base=None, config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> None:
    with exit_on_user_error():
        # Late: it imports torch (2-4 s), which a sweep (-m) never needs; sweeps do not get here.
        from jobs.launchers import LAUNCHERS

        plan = plan_from_config(cfg)
        run_dir = Path(HydraConfig.get().runtime.output_dir)
        summary = LAUNCHERS[plan.cluster.name](plan, run_dir)
        if summary is not None:
            print_summary(summary)


if __name__ == "__main__":
    main()
