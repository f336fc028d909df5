"""Hydra callbacks named in ``conf/train.yaml``."""

import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from cluster.errors import SettingError
from cluster.rundir import check_writable
from jobs.user_errors import describe


class CheckRunDir(Callback):
    """Fail with one line, not Hydra's traceback, when the run directory cannot be created."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        try:
            check_writable(Path(config.hydra.run.dir))
        except SettingError as error:
            print(f"error: {describe(error)}", file=sys.stderr)
            sys.exit(2)
