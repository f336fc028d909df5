"""Every use of submitit's private API, in one place (submitit 1.5; ``pyproject.toml`` bounds it), and what we
rely on of its job layout.

``tests/unit/test_compat.py`` checks each of these against the installed submitit and fails loudly
when a new version changes one; the rest of the library uses submitit's public API only.
"""

import os
import shlex
import sys
from pathlib import Path
from typing import Any

import submitit
from submitit.core import job_environment, submission
from submitit.slurm.slurm import _make_sbatch_string

# submitit's FailedJobError: the rank's traceback, then this line, then where the logs are.
_FAILED_JOB_TAIL = "\n----------------------\nYou can check"


def make_sbatch_string(**parameters: Any) -> str:
    """The batch script submitit's SlurmExecutor would submit for ``parameters`` (a pure function)."""
    return _make_sbatch_string(**parameters)


def executor_with_command(command: str, folder: Path) -> submitit.SlurmExecutor:
    """A SlurmExecutor whose tasks run ``command`` instead of submitit's own runner."""

    class _Executor(submitit.SlurmExecutor):
        @property
        def _submitit_command_str(self) -> str:  # what srun runs in the batch script
            return command

    return _Executor(folder=folder, python=shlex.quote(sys.executable))


def run_pickled_job(folder: str) -> None:
    """What ``python -m submitit.core._submit FOLDER`` does, without submitit's signal handlers: ours only
    set a flag (``cluster.warning_signals``), where submitit's would checkpoint and requeue inside the handler."""
    job_environment.JobEnvironment._handle_signals = lambda self, paths, submission: None  # type: ignore[method-assign]
    submission.process_job(folder)


def keep_result_folder() -> None:
    """Make sure the folder submitit writes this task's result to exists: a task whose folder was deleted while
    it trained would otherwise fail after finishing (and its job would end FAILED). Nothing to do in a task
    submitit's runner did not start (a sweep's array task: ``cluster.sweep.array_task``)."""
    if "SUBMITIT_FOLDER" in os.environ:  # set by submitit's runner (submitit/core/submission.py)
        Path(submitit.JobEnvironment().paths.folder).mkdir(parents=True, exist_ok=True)


def failure_text(error: BaseException) -> str:
    """A failed task's own error, without submitit's closing lines about where the logs are."""
    return str(error).split(_FAILED_JOB_TAIL)[0].strip()
