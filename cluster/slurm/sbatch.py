"""Slurm jobs: the sbatch text a job renders to, and submission.

The sbatch text comes from submitit's own pure ``_make_sbatch_string`` (``cluster.submitit_compat``),
fed the very parameters the executor submits with, so a dry run shows exactly the script that
``sbatch`` would get. A single run is submitted by submitit (one pickle, its result read back when the
launcher waits); a sweep's job array is submitted here, its script given to ``sbatch`` as text: each
task reads its members from the sweep's one ``submissions.pkl`` (``cluster.sweep.array_task``), where
submitit's ``map_array`` writes and renames a pickle per task (10,000 files for 10,000 members).
"""

import contextlib
import io
import shlex
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import submitit
from submitit.core.utils import FailedJobError

from cluster.errors import SettingError, SubmissionRefusedError, literal
from cluster.local.ranks import wait_for
from cluster.requeue import EXIT_INTERRUPTED
from cluster.slurm import commands
from cluster.slurm.resources import SlurmResources
from cluster.submitit_compat import executor_with_command, make_sbatch_string


def sbatch_parameters(resources: SlurmResources) -> dict[str, Any]:
    """The parameters of submitit's SlurmExecutor (and of its sbatch text) for ``resources``."""
    r = resources
    optional = {"partition": r.partition, "account": r.account, "qos": r.qos, "constraint": r.constraint,
                "exclude": r.exclude, "gpus_per_node": r.gpus_per_node, "mem": f"{r.mem_gb:g}GB" if r.mem_gb else ""}
    parameters: dict[str, Any] = {
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
    if r.elastic:
        # --nodes=MIN-MAX in place of submitit's --nodes line (whose count submitit keeps as the most). The tasks
        # per node go to srun: on the allocation, Slurm counts the job's tasks from MIN and gives it MIN nodes even
        # when more are free. --mincpus keeps the CPUs those tasks need on each node.
        del parameters["ntasks_per_node"]
        parameters["srun_args"] = [f"--ntasks-per-node={r.tasks_per_node}"]
        parameters["additional_parameters"].update(nodes=f"{r.min_nodes}-{r.nodes}",
                                                   mincpus=r.tasks_per_node * r.cpus_per_task)
    return parameters


def task_command(runner_args: Sequence[str], python: str = sys.executable) -> str:
    """The line each task runs: ``cluster.slurm.task_runner`` (our early signal handlers, then submitit's runner
    for ``FOLDER``, or a sweep's members for ``--sweep ...``)."""
    return shlex.join([python, "-u", "-m", "cluster.slurm.task_runner", *runner_args])


def render_sbatch(resources: SlurmResources, *, folder: Path, python: str = sys.executable,
                  array_size: int | None = None, array_parallelism: int = 256,
                  runner_args: Sequence[str] = ()) -> str:
    """The batch script for ``resources`` with logs in ``folder``: pure, and what ``submit`` sends.

    ``array_size`` renders a job array of that many tasks, at most ``array_parallelism`` at once; ``runner_args``
    are the task runner's arguments (default: submitit's folder).
    """
    array = {"map_count": array_size, "array_parallelism": array_parallelism} if array_size else {}
    return make_sbatch_string(command=task_command(runner_args or [str(folder)], python), folder=folder,
                              **sbatch_parameters(resources), **array)


def check_setup(resources: SlurmResources) -> None:
    """The setup lines must parse as shell (``bash -n``): a typo would fail the job in 0 s, with no word why."""
    if not resources.setup:
        return
    parsed = subprocess.run(["bash", "-n"], input="\n".join(resources.setup) + "\n", capture_output=True, text=True,
                            timeout=10)
    if parsed.returncode:
        reason = (parsed.stderr.strip().splitlines() or ["a syntax error"])[-1].removeprefix("bash: ")
        raise SettingError(f"{{k.setup}} is not valid shell ({literal(reason)}); fix the line, it runs in the batch "
                           "script before the ranks start")


def _executor(folder: Path) -> submitit.SlurmExecutor:
    return executor_with_command(task_command([str(folder)], sys.executable), folder)


@contextlib.contextmanager
def _sbatch_answers() -> Iterator[None]:
    """sbatch's refusal as one SubmissionRefusedError with its reason (submitit would also print it)."""
    echoed = io.StringIO()
    try:
        with contextlib.redirect_stderr(echoed):
            yield
    except FailedJobError as error:
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        reason = next((line for line in lines if "error" in line.lower()), lines[0] if lines else "no reason given")
        raise SubmissionRefusedError(f"sbatch refused the job, nothing was submitted: {literal(reason)}") from None


def submit(fn: Callable[..., Any], *args: Any, resources: SlurmResources, folder: Path) -> "submitit.Job[Any]":
    """Submit ``fn(*args)`` as one job with every task running it; returns at once."""
    executor = _executor(folder)
    executor.update_parameters(**sbatch_parameters(resources))
    with _sbatch_answers():
        return executor.submit(fn, *args)


def submit_array(resources: SlurmResources, *, size: int, folder: Path, parallelism: int,
                 runner_args: Sequence[str]) -> str:
    """Submit a job array of ``size`` tasks (one ``sbatch``, no file written), at most ``parallelism`` running at
    once, each a job of ``resources`` (several nodes if asked) running the task runner with ``runner_args``; the
    array's job id."""
    return commands.sbatch(render_sbatch(resources, folder=folder, array_size=size, array_parallelism=parallelism,
                                         runner_args=runner_args))


def follow(job: "submitit.Job[Any]", run_dir: Path, *, on_poll: Callable[[], None] = lambda: None) -> Any:
    """Wait for a submitted job to end; rank 0's result. Ctrl-C stops the following, not the job: it says that
    the job goes on and how to see or cancel it, and exits 130."""
    try:
        return wait_for(job, on_poll=on_poll)
    except KeyboardInterrupt:
        print(f"\nstopped following (Ctrl-C); Slurm job {job.job_id} goes on: python -m cluster status {run_dir} "
              f"shows it, scancel {job.job_id} cancels it", file=sys.stderr, flush=True)
        raise SystemExit(EXIT_INTERRUPTED) from None
