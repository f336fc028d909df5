"""slurm/local-cluster itself: `up` on a running cluster changes nothing and returns at once."""

import subprocess
import time
from pathlib import Path

from tests.helpers import REPO


def test_up_on_a_running_cluster_restarts_nothing_and_returns_in_under_a_second(slurm_cluster):
    script = [str(REPO / "slurm" / "local-cluster"), "up"]
    subprocess.run(script, check=True, capture_output=True, timeout=180)  # whatever state it was in: up now
    daemons = {pid: Path(pid).read_text() for pid in ("/run/slurmctld.pid", "/run/slurmd-node1.pid")}
    began = time.monotonic()
    again = subprocess.run(script, check=True, capture_output=True, text=True, timeout=60)
    elapsed = time.monotonic() - began
    assert "restarting" not in again.stdout + again.stderr, again.stdout + again.stderr
    assert {pid: Path(pid).read_text() for pid in daemons} == daemons, "a daemon was restarted"
    assert elapsed < 1.0, f"`up` on a running cluster took {elapsed:.2f} s"
