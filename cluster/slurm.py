"""Slurm jobs through submitit: typed resources, the sbatch text they render to, and submission.

The sbatch text comes from submitit's own pure ``_make_sbatch_string``, fed the very parameters the
executor submits with, so a dry run shows exactly the script that ``sbatch`` would get.
"""

import dataclasses
import re
import shlex
import sys
from pathlib import Path
from typing import Any, Callable

import submitit
from submitit.slurm.slurm import _make_sbatch_string

from cluster.validation import require_one_of, require_positive

SIGNALS = ("USR1", "USR2", "TERM", "INT", "HUP", "QUIT", "ALRM")
_FLAG = re.compile(r"^[a-z][a-z0-9_-]*$")


@dataclasses.dataclass(frozen=True)
class SlurmResources:
    """What one job asks Slurm for."""

    nodes: int = 1  # nodes of the job
    tasks_per_node: int = 1  # ranks per node (one per GPU on GPU nodes)
    gpus_per_node: int = 0  # GPUs per node (0: a CPU job, gloo)
    cpus_per_task: int = 1  # CPU cores per rank
    mem_gb: float = 0  # memory per node in GB (0: the partition's default)
    timeout_min: int = 60  # wall-clock limit in minutes
    partition: str = ""  # partition ("" : the cluster's default one)
    account: str = ""  # account to charge ("" : your default)
    qos: str = ""  # quality of service ("" : the default)
    constraint: str = ""  # node features required, Slurm syntax ("gpu80g&ib")
    exclude: str = ""  # nodes to avoid, a Slurm host list ("node[3-4]")
    job_name: str = "clusterjobs"  # name shown by squeue and sacct
    signal: str = "USR2"  # signal sent before the time limit and at preemption (USR1 may be NCCL's)
    signal_lead_s: int = 120  # seconds before the end at which the signal comes
    setup: tuple[str, ...] = ()  # shell lines run in the batch script before the ranks start
    additional: tuple[tuple[str, str], ...] = ()  # further sbatch options as (flag, value), e.g. (("mail-type", "END"),)

    def __post_init__(self) -> None:
        require_positive("cluster", nodes=self.nodes, tasks_per_node=self.tasks_per_node,
                         cpus_per_task=self.cpus_per_task, timeout_min=self.timeout_min)
        if self.gpus_per_node < 0 or self.mem_gb < 0 or self.signal_lead_s < 0:
            raise ValueError("cluster.gpus_per_node, cluster.mem_gb and cluster.signal_lead_s must not be negative; "
                             "use 0 for none")
        require_one_of("cluster.signal", self.signal, SIGNALS)
        texts = [self.partition, self.account, self.qos, self.constraint, self.exclude, self.job_name,
                 *self.setup, *(part for pair in self.additional for part in pair)]
        for text in texts:
            # A value is quoted on its #SBATCH line, but a line break would start a line of shell.
            if any(ord(char) < 32 or ord(char) == 127 for char in text):
                raise ValueError(f"cluster setting {text!r} holds a line break or control character; remove it")
        for flag, _ in self.additional:
            if not _FLAG.match(flag):
                raise ValueError(f"cluster.additional flag {flag!r} is no sbatch option name (like 'mail-type')")

    @property
    def world_size(self) -> int:
        return self.nodes * self.tasks_per_node


def sbatch_parameters(resources: SlurmResources) -> dict[str, Any]:
    """The parameters of submitit's SlurmExecutor (and of ``_make_sbatch_string``) for ``resources``."""
    r = resources
    optional = {"partition": r.partition, "account": r.account, "qos": r.qos, "constraint": r.constraint,
                "exclude": r.exclude, "gpus_per_node": r.gpus_per_node, "mem": f"{r.mem_gb:g}GB" if r.mem_gb else ""}
    return {
        "job_name": r.job_name,
        "nodes": r.nodes,
        "ntasks_per_node": r.tasks_per_node,
        "cpus_per_task": r.cpus_per_task,
        "time": r.timeout_min,
        "signal_delay_s": r.signal_lead_s,
        "setup": list(r.setup),
        # submitit writes --signal=USR2@delay; an explicit value names the configured signal.
        "additional_parameters": {"signal": f"{r.signal}@{r.signal_lead_s}", **dict(r.additional)},
        **{key: value for key, value in optional.items() if value},
    }


def submit_command(folder: Path, python: str = sys.executable) -> str:
    """The line each task runs: submitit's runner behind our early signal handlers (``cluster.task_runner``)."""
    return f"{shlex.quote(python)} -u -m cluster.task_runner {shlex.quote(str(folder))}"


def render_sbatch(resources: SlurmResources, *, folder: Path, python: str = sys.executable,
                  array_size: int | None = None, array_parallelism: int = 256) -> str:
    """The batch script for ``resources`` with logs in ``folder``: pure, and what ``submit`` sends.

    ``array_size`` renders a job array of that many tasks, at most ``array_parallelism`` at once.
    """
    array = {"map_count": array_size, "array_parallelism": array_parallelism} if array_size else {}
    return _make_sbatch_string(command=submit_command(folder, python), folder=folder,
                               **sbatch_parameters(resources), **array)


class _Executor(submitit.SlurmExecutor):
    """submitit's Slurm executor, whose tasks start through ``cluster.task_runner``."""

    @property
    def _submitit_command_str(self) -> str:
        return submit_command(Path(self.folder), sys.executable)


def submit(fn: Callable[..., Any], *args: Any, resources: SlurmResources, folder: Path) -> "submitit.Job[Any]":
    """Submit ``fn(*args)`` as one job with every task running it; returns at once."""
    executor = _Executor(folder=folder, python=shlex.quote(sys.executable))
    executor.update_parameters(**sbatch_parameters(resources))
    return executor.submit(fn, *args)


def submit_array(fn: Callable[..., Any], arg_lists: list[tuple[Any, ...]], *, resources: SlurmResources,
                 folder: Path, parallelism: int) -> list["submitit.Job[Any]"]:
    """Submit ``fn(*args)`` for every ``args`` as one job array (one ``sbatch``), at most ``parallelism``
    tasks running at once; every array task is a job of ``resources`` (several nodes if asked)."""
    executor = _Executor(folder=folder, python=shlex.quote(sys.executable))
    executor.update_parameters(**sbatch_parameters(resources), array_parallelism=parallelism)
    return executor.map_array(fn, *zip(*arg_lists))
