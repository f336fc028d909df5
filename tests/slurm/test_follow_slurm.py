"""Ctrl-C while following a Slurm job (``cluster.wait=true``, ``--wait``) stops the following, not the job: one
line says the job goes on and how to see or cancel it; exit 130, no traceback."""

import signal
import subprocess
import sys
import time

import pytest

from tests.helpers import REPO, wait_until
from tests.slurm.test_requeue_slurm import in_queue

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("slurm_cluster")]


def as_a_terminals_foreground_job() -> None:
    """SIGINT as a terminal's foreground job has it. The suite itself may run with SIGINT ignored (a shell's
    background job: ``pytest &``), which every child inherits, and Python then leaves it ignored."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.parametrize("command", [
    ("-m", "jobs.train", "cluster=slurm", "cluster.wait=true", "train.steps=100000"),
    ("-m", "cluster", "run", "--wait", "--", sys.executable, "-c", "import time; time.sleep(300)"),
], ids=["cluster.wait", "run --wait"])
def test_ctrl_c_while_following_leaves_the_job_running_and_says_so(tmp_path, command):
    run_dir = tmp_path / "run"
    where = (f"hydra.run.dir={run_dir}",) if "jobs.train" in command else ("--run-dir", str(run_dir))
    args = (*command[:3], *where, *command[3:]) if "jobs.train" not in command else (*command, *where)
    following = subprocess.Popen([sys.executable, *args], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 text=True, preexec_fn=as_a_terminals_foreground_job)
    job = ""
    try:
        assert following.stdout is not None
        first = following.stdout.readline()
        assert "submitted job " in first, first + following.stderr.read() if following.stderr else ""
        job = first.split("submitted job ")[1].split()[0]
        time.sleep(2)  # following now
        following.send_signal(signal.SIGINT)  # what Ctrl-C sends it
        out, err = following.communicate(timeout=30)
        assert following.returncode == 130, err
        lines = [line for line in err.splitlines() if line.strip() and not line.startswith(("step ", "["))]
        assert lines == [f"stopped following (Ctrl-C); Slurm job {job} goes on: python -m cluster status {run_dir} "
                         f"shows it, scancel {job} cancels it"], err
        assert in_queue(job)
        status = subprocess.run([sys.executable, "-m", "cluster", "status", str(run_dir)], cwd=REPO,
                                capture_output=True, text=True, timeout=60)
        assert status.returncode == 3 and job in (run_dir / ".claim").read_text(), status.stdout + status.stderr
    finally:
        following.kill()
        if job:
            subprocess.run(["scancel", job], check=False)
            wait_until(lambda: not in_queue(job), timeout=60, what=f"job {job} to be cancelled")
