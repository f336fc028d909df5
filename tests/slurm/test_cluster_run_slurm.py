"""``python -m cluster run`` on the real local Slurm cluster: an unmodified torchrun-style script across two
nodes, a script on the public API preempted and resumed exactly, a plain script requeued by the warning it
did not handle, and bad options refused with the queue unchanged."""

import random
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cluster.rundir import read_events
from tests.helpers import REPO, cli, in_background, squeue_ids, wait_until
from tests.ranks.test_cluster_run import API_SCRIPT, cluster_run, digest_of
from tests.slurm.test_requeue_slurm import in_queue, preempt_everything

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("slurm_cluster")]
TWO_NODES = ("--nodes", "2", "--timeout-min", "10")


def submitted(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 0, result.stderr
    return result.stdout.split("submitted job ")[1].split()[0]


def rank0_log(run_dir: Path, job: str) -> str:
    return (run_dir / "logs" / f"{job}_0_log.out").read_text()


def test_an_unmodified_torchrun_script_all_reduces_across_two_nodes(tmp_path):
    done = cluster_run(tmp_path, "examples/torchrun_ddp.py", "--epochs", "1",
                       options=(*TWO_NODES, "--tasks-per-node", "2", "--wait"))
    job = submitted(done)
    log = rank0_log(tmp_path, job)
    assert "world 4, hosts ['node1', 'node2'], sum of ranks 6" in log or "sum of ranks 6" in log and log.count("node")
    assert "param digest: " in log
    assert [e["event"] for e in read_events(tmp_path)] == ["finished"]
    status = cli("status", str(tmp_path))
    assert status.returncode == 0 and "COMPLETED" in status.stdout, status.stdout


def test_an_api_script_preempted_on_slurm_ends_as_an_uninterrupted_run(tmp_path):
    reference = in_background(cluster_run, tmp_path / "reference", *API_SCRIPT, "--steps", "5000")
    run_dir = tmp_path / "slurm"
    job = submitted(cluster_run(run_dir, *API_SCRIPT, "--steps", "5000", options=TWO_NODES))
    at = random.Random().randint(300, 1500)
    print(f"preempting at step {at}")
    wait_until(lambda: (run_dir / "step").is_file() and int((run_dir / "step").read_text() or 0) >= at,
               timeout=180, what=f"step {at}")
    preempt_everything()
    wait_until(lambda: not in_queue(job), timeout=300, what=f"job {job} to end", poll=1)
    events = read_events(run_dir)
    signalled = [e for e in events if e["event"] == "signalled"]
    assert signalled and signalled[0]["cause"] == "preemption", events
    assert [e["step"] for e in events if e["event"] == "resumed"] == [signalled[0]["step"]]
    assert events[-1]["event"] == "finished"
    uninterrupted = reference.result()
    assert uninterrupted.returncode == 0, uninterrupted.stderr[-3000:]
    assert digest_of(rank0_log(run_dir, job)) == digest_of(uninterrupted.stdout)


def test_a_plain_script_killed_by_the_warning_is_requeued(tmp_path):
    script = tmp_path / "plain.py"
    script.write_text("import os, time\nfrom pathlib import Path\n"
                      "mark = Path(os.environ['CLUSTERJOBS_RUN_DIR'], 'ran-once-' + os.environ['RANK'])\n"
                      "if mark.exists():\n    print('second run', flush=True)\nelse:\n"
                      "    mark.touch()\n    time.sleep(600)\n")
    run_dir = tmp_path / "run"
    job = submitted(cluster_run(run_dir, str(script), options=TWO_NODES))
    wait_until(lambda: (run_dir / "ran-once-0").exists() and (run_dir / "ran-once-1").exists(), timeout=120,
               what="both ranks to start")
    time.sleep(1)
    preempt_everything()
    wait_until(lambda: not in_queue(job), timeout=300, what=f"job {job} to end", poll=1)
    events = read_events(run_dir)
    assert [(e["event"], e.get("cause")) for e in events] == [("requeued", "preemption"), ("finished", None)], events
    assert "second run" in rank0_log(run_dir, job)


@pytest.mark.parametrize("options, message", [
    (("--nodes", "9"), "error: --nodes=9 exceeds partition debug's 4 nodes; ask for at most 4"),
    (("--partition", "nope"), "error: partition 'nope' does not exist (partitions: debug, high); set --partition=NAME"),
    (("--nodes", "0"), "error: --nodes must be positive, got 0; set --nodes=<a number > 0>"),
    (("--setup", "if then"), "error: --setup is not valid shell"),
    (("--additional", "time=5"), "error: --additional flag 'time' would override"),
])
def test_options_that_do_not_fit_are_refused_with_the_queue_unchanged(tmp_path, options, message):
    before = squeue_ids()
    done = cluster_run(tmp_path / "r", "examples/torchrun_ddp.py", options=options)
    assert done.returncode == 2 and done.stderr.startswith(message) and len(done.stderr.splitlines()) == 1, \
        done.stderr
    assert not squeue_ids() - before and not (tmp_path / "r").exists()


def test_a_dry_run_prints_the_job_and_submits_nothing(tmp_path):
    before = squeue_ids()
    done = subprocess.run([sys.executable, "-m", "cluster", "run", *TWO_NODES, "--dry-run", "--run-dir",
                           str(tmp_path / "r"), "--", "python", "examples/torchrun_ddp.py"], cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "#SBATCH --nodes=2" in done.stdout and "cluster.slurm.task_runner" in done.stdout
    assert "each of the 2 task(s) runs: python examples/torchrun_ddp.py" in done.stdout
    assert not squeue_ids() - before and not (tmp_path / "r").exists()
