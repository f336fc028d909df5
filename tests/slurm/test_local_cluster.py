"""slurm/local-cluster itself: `up` on a running cluster changes nothing and returns at once; `down`, `status`, `up`."""

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


def test_down_stops_every_daemon_status_says_so_and_up_brings_back_four_nodes_that_run_jobs(slurm_cluster):
    script = str(REPO / "slurm" / "local-cluster")
    down = subprocess.run([script, "down"], capture_output=True, text=True, timeout=120)
    try:
        assert down.returncode == 0 and "down in" in down.stdout + down.stderr, down.stdout + down.stderr
        status = subprocess.run([script, "status"], capture_output=True, text=True, timeout=60)
        assert status.returncode == 3 and "slurmctld does not answer" in status.stdout, status.stdout
        for pid_file in ("munge/munged.pid", "mysqld/mysqld.pid", "slurmdbd.pid", "slurmctld.pid", "slurmd-node"):
            assert f"stopped  /run/{pid_file}" in status.stdout, status.stdout
        assert "running" not in status.stdout, status.stdout
    finally:
        subprocess.run([script, "up"], check=True, capture_output=True, timeout=180)
    status = subprocess.run([script, "status"], capture_output=True, text=True, timeout=60)
    assert status.returncode == 0 and "stopped" not in status.stdout, status.stdout
    assert status.stdout.count("running") == 8, status.stdout  # munge, MariaDB, slurmdbd, slurmctld, 4 slurmd
    ran = subprocess.run(["srun", "-N4", "--time=1", "hostname"], capture_output=True, text=True, timeout=120)
    assert ran.returncode == 0 and len(ran.stdout.split()) == 4, ran.stdout + ran.stderr
