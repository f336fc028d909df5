"""Train a model from a Hydra config: ``python -m jobs.train [overrides]``.

Parse, plan, start the ranks, report; the work is in ``jobs.start`` and ``jobs.loop``.
"""

import os
import sys
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import ConfigCompositionException, MissingConfigException
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException

import jobs.settings
from jobs.plan import config_message, plan_from_config
from jobs.user_errors import exit_on_user_error


def print_summary(summary: dict[str, Any]) -> None:
    validation = "".join(f", {key} {summary[key]:.4f}" for key in ("val_loss", "val_accuracy") if key in summary)
    print(
        f"done: {summary['steps']} steps, final loss {summary['final_loss']:.4f}{validation}, "
        f"{summary['samples_per_s']:,.0f} samples/s on {summary['world_size']} rank(s)\n"
        f"param digest: {summary['param_digest']}\n"
        f"run dir: {summary['run_dir']} (summary.json, metrics.jsonl, checkpoints/)"
    )


jobs.settings.register()  # the schemas conf/ names (again, if importing jobs.settings did: it overwrites)


@hydra.main(version_base=None, config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> None:
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    with exit_on_user_error(run_dir):
        # Late: it imports torch (2-4 s), which a sweep (-m) never needs; sweeps do not get here.
        from jobs.start import START

        plan = plan_from_config(cfg)
        summary = START[plan.cluster.name](plan, run_dir)
        if summary is not None:
            print_summary(summary)


def cli() -> None:
    """``python -m jobs.train``: Hydra's main, and a value the schema refuses (``train.steps=ten``) told in
    one line, with exit code 2, like every other bad value."""
    os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra raises what it cannot compose, instead of printing it and exiting 1
    try:
        main()
    except MissingConfigException as error:  # an unknown option: Hydra's message lists the ones there are
        print(str(error), file=sys.stderr)
        sys.exit(1)
    except ConfigCompositionException as error:
        cause = error.__cause__
        print(f"error: {config_message(cause) if isinstance(cause, OmegaConfBaseException) else error}",
              file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    cli()
