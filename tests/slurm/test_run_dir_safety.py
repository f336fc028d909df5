"""Nothing lost, nothing wasted, on the real local Slurm cluster: one live run per directory, a full disk,
dry runs, retries of what was deleted, and everything that can be known refused before submitting."""

import json
import shutil
import subprocess
import sys
import time

import pytest

from cluster.rundir import read_events
from tests.helpers import REPO, cli, events_named, run_sweep, run_train, squeue_ids, wait_done, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("slurm_cluster")]
LONG = ("cluster=slurm", "train.steps=200000", "train.checkpoint_every_steps=100000")


def submitted_job(result: subprocess.CompletedProcess) -> str:
    return result.stdout.split("submitted job ")[1].split()[0]


def left_queue(job_id: str, *, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while job_id in squeue_ids():
        assert time.monotonic() < deadline, f"job {job_id} is still queued"
        time.sleep(1)


def sacct(job_id: str, field: str) -> str:
    """A field of an ended job as accounting has it: sacct lags squeue by a few seconds, so wait for the end."""
    deadline = time.monotonic() + 60
    while True:
        state, value = subprocess.run(["sacct", "-n", "-X", "-P", "-j", job_id, f"--format=State,{field}"],
                                      capture_output=True, text=True, check=True).stdout.strip().partition("|")[::2]
        if state.split(" ")[0] not in ("", "PENDING", "RUNNING", "COMPLETING", "REQUEUED") or \
                time.monotonic() > deadline:
            return value


def assert_one_line_refusal(result: subprocess.CompletedProcess, *fragments: str) -> None:
    assert result.returncode == 2, result.stdout + result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_a_second_submission_into_a_live_run_directory_is_refused_with_the_job_and_its_state(tmp_path):
    first = submitted_job(run_train(*LONG, f"hydra.run.dir={tmp_path}"))
    try:
        queue = squeue_ids()
        again = run_train(*LONG, f"hydra.run.dir={tmp_path}", check=False)
        assert_one_line_refusal(again, f"belongs to Slurm job {first}, which is", f"scancel {first}",
                                "hydra.run.dir")
        local = run_train("cluster=local", "train.steps=10", f"hydra.run.dir={tmp_path}", check=False)
        assert_one_line_refusal(local, f"belongs to Slurm job {first}")
        assert not squeue_ids() - queue, "a refused submission reached the queue"
    finally:
        subprocess.run(["scancel", first], check=True)
    left_queue(first)
    second = submitted_job(run_train(*LONG, f"hydra.run.dir={tmp_path}"))  # the directory is free again
    subprocess.run(["scancel", second], check=True)


def test_a_job_that_finds_another_live_job_in_its_directory_ends_without_training_there(tmp_path):
    first = submitted_job(run_train(*LONG, f"hydra.run.dir={tmp_path}"))
    try:
        # the first job claims the directory again as it starts: fake the race only after that
        wait_until(lambda: events_named(tmp_path, "started"), timeout=120, what=f"job {first} to start")
        (tmp_path / ".claim").write_text("0\n")  # as if a second job had got past the submission's check
        second = submitted_job(run_train(*LONG, f"hydra.run.dir={tmp_path}"))
        (tmp_path / ".claim").write_text(f"{first}\n")
        left_queue(second)
        assert sacct(second, "State") == "FAILED" and f"belongs to Slurm job {first}" in sacct(second, "Comment")
        assert not [e for e in read_events(tmp_path) if e["job"] == second], "it wrote into the live run's events"
    finally:
        subprocess.run(["scancel", first], check=True)


@pytest.fixture
def small_disk(tmp_path):
    """A 3 MB filesystem: a few checkpoints of the seed MLP fit, then none."""
    mount = tmp_path / "small"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount)], check=True)
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_run_whose_checkpoints_cannot_be_written_fails_with_the_reason(small_disk):
    run_dir = small_disk / "run"
    job = submitted_job(run_train("cluster=slurm", "cluster.nodes=2", "train.steps=1500",
                                  "train.checkpoint_every_steps=100", f"hydra.run.dir={run_dir}"))
    left_queue(job, timeout=240)
    assert sacct(job, "State") == "FAILED", "the run reported success though its state exists nowhere"
    assert "could not be written" in sacct(job, "Comment")
    status = cli("status", str(run_dir), "--json")
    member = json.loads(status.stdout)["members"][0]
    assert status.returncode == 1 and member["state"] == "FAILED" and "could not be written" in member["error"]
    failed = [e for e in read_events(run_dir) if e["event"] == "checkpoint-failed"]
    assert failed and all("MB free" in e["error"] or "MB are free" in e["error"] for e in failed)
    assert not (run_dir / "summary.json").exists()


def test_a_sweeps_dry_run_submits_nothing_and_shows_its_arrays(tmp_path):
    queue = squeue_ids()
    result, _ = run_sweep(tmp_path, "cluster=slurm", "cluster.dry_run=true", "optim.lr=0.1,0.01,0.001",
                          "cluster.nodes=1,2")
    assert "dry run: 6 member(s) would go to Slurm as 2 job array(s)" in result.stdout
    # Hydra varies the last override fastest: the 1-node members are 0, 2, 4, the 2-node ones 1, 3, 5
    assert "array 1: members 0,2,4 (3 tasks" in result.stdout and "array 2: members 1,3,5 (3 tasks" in result.stdout
    assert "#SBATCH --array=0-2%" in result.stdout and "#SBATCH --nodes=1" in result.stdout
    assert not squeue_ids() - queue and not list(tmp_path.iterdir())  # nor anything left in the sweep directory


def test_hydra_launcher_max_array_size_cuts_the_arrays_smaller_than_the_clusters_limit(tmp_path):
    result, _ = run_sweep(tmp_path, "cluster=slurm", "cluster.dry_run=true", "optim.lr=0.1,0.2,0.3,0.4,0.5",
                          "hydra.launcher.max_array_size=2")
    assert ("dry run: 5 member(s) would go to Slurm as 3 job array(s) (at most 2 tasks each: "
            "hydra.launcher.max_array_size)") in result.stdout, result.stdout
    for line in ("array 1: members 0-1 (2 tasks", "array 2: members 2-3 (2 tasks", "array 3: members 4 (1 tasks"):
        assert line in result.stdout, result.stdout


def test_retry_waits_for_a_live_job_and_recreates_what_was_deleted(tmp_path):
    run_sweep(tmp_path, "cluster=slurm", "train.steps=40,3000")
    wait_until_running = time.monotonic() + 120
    while not (tmp_path / "1" / "metrics.jsonl").exists():
        assert time.monotonic() < wait_until_running, "member 1 never trained"
        time.sleep(0.5)
    assert cli("cancel", str(tmp_path), "1").returncode == 0
    status = wait_done(tmp_path, timeout=180)
    assert [m["state"] for m in status["members"]] == ["COMPLETED", "CANCELLED"]

    blocker = subprocess.run(["sbatch", "--parsable", "--output=/dev/null", "--wrap", "sleep 120"],
                             capture_output=True, text=True, check=True).stdout.strip()
    try:
        (tmp_path / "1" / ".claim").write_text(blocker + "\n")  # a job still at work in member 1's directory
        queue = squeue_ids()
        refused = cli("retry", str(tmp_path))
        assert refused.returncode == 2 and f"belongs to Slurm job {blocker}" in refused.stderr, refused.stderr
        assert not squeue_ids() - queue
    finally:
        subprocess.run(["scancel", blocker], check=True)
    left_queue(blocker)

    shutil.rmtree(tmp_path / "1")
    shutil.rmtree(tmp_path / "logs")
    retried = cli("retry", str(tmp_path))
    assert retried.returncode == 3, retried.stdout + retried.stderr
    again = wait_done(tmp_path, timeout=240)
    assert [m["state"] for m in again["members"]] == ["COMPLETED", "COMPLETED"], again
    assert json.loads((tmp_path / "1" / "summary.json").read_text())["steps"] == 3000


def test_a_member_that_finished_is_completed_though_its_logs_were_deleted_while_it_ran(tmp_path):
    run_sweep(tmp_path, "cluster=slurm", "train.steps=1500", "optim.lr=0.05")
    deadline = time.monotonic() + 120
    while not (tmp_path / "0" / "metrics.jsonl").exists():
        assert time.monotonic() < deadline, "the member never trained"
        time.sleep(0.5)
    shutil.rmtree(tmp_path / "logs")  # where submitit writes what the task returns
    status = wait_done(tmp_path, timeout=180)
    assert status["members"][0]["state"] == "COMPLETED", status


def test_a_rank_side_configuration_error_is_never_retried_and_its_reason_is_in_the_slurm_comment(tmp_path):
    other = tmp_path / "other"
    run_train("cluster=local", "train.steps=5", "train.checkpoint_every_steps=5", "optim.lr=0.5",
              f"hydra.run.dir={other}")
    blocker = subprocess.run(["sbatch", "--parsable", "-N", "4", "--exclusive", "--output=/dev/null",
                              "--wrap", "sleep 60"], capture_output=True, text=True, check=True).stdout.strip()
    run_dir = tmp_path / "run"
    try:
        job = submitted_job(run_train("cluster=slurm", "train.steps=5", f"hydra.run.dir={run_dir}"))
        # While it waits, the directory gets a checkpoint of another configuration (lr 0.5, not 0.05).
        shutil.copytree(other / "checkpoints", run_dir / "checkpoints")
    finally:
        subprocess.run(["scancel", blocker], check=True)
    left_queue(job, timeout=120)
    assert sacct(job, "State") == "FAILED"
    assert "belongs to another configuration" in sacct(job, "Comment")
    events = read_events(run_dir)
    assert not [e for e in events if e["event"] == "requeued"] and len({e["restart"] for e in events}) == 1
    status = json.loads(cli("status", str(run_dir), "--json").stdout)["members"][0]
    assert status["state"] == "FAILED" and "belongs to another configuration" in status["error"]


@pytest.mark.parametrize("overrides, fragment", [
    (("cluster.timeout_min=1",), "is not longer than the warning's lead cluster.signal_lead_s=120"),
    (("train.global_batch_size=16384",), "the dataset has 8192 samples, fewer than one global batch"),
    (("cluster.setup=[\"echo 'unbalanced\"]",), "cluster.setup is not valid shell"),
    (("+cluster.additional.nodes=2",), "cluster.additional flag 'nodes' would override"),
    (("cluster.exclude=no_such_node",), "cluster.exclude names no node of this cluster: no_such_node"),
    (("cluster.constraint=no_such_feature",), "cluster.constraint asks for no_such_feature, which no node"),
    (("+cluster.additional.bogus-flag=1",), "sbatch refused the job, nothing was submitted: sbatch: unrecognized"),
])
def test_what_can_be_known_is_refused_before_submitting_in_one_line_leaving_nothing(tmp_path, overrides, fragment):
    run_dir = tmp_path / "run"
    queue = squeue_ids()
    result = run_train("cluster=slurm", *overrides, f"hydra.run.dir={run_dir}", check=False)
    assert_one_line_refusal(result, fragment)
    assert not squeue_ids() - queue and not run_dir.exists()


def test_a_sweep_directory_under_a_file_is_one_line(tmp_path):
    (tmp_path / "file").write_text("")
    result = subprocess.run([sys.executable, "-m", "jobs.train", "-m", "cluster=slurm", "optim.lr=0.1,0.01",
                             f"hydra.sweep.dir={tmp_path / 'file' / 'sweep'}"], cwd=REPO, capture_output=True,
                            text=True, timeout=120)
    assert_one_line_refusal(result, "cannot write to the sweep directory", "hydra.sweep.dir=PATH")


def test_a_refused_sweep_leaves_nothing(tmp_path):
    sweep_dir = tmp_path / "sweep"
    result = subprocess.run([sys.executable, "-m", "jobs.train", "-m", "cluster=slurm", "optim.lr=0.1,0.01",
                             "+cluster.additional.bogus-flag=1", f"hydra.sweep.dir={sweep_dir}"], cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    assert_one_line_refusal(result, "sbatch refused the job")
    assert not sweep_dir.exists()


def test_one_bad_member_of_a_sweep_means_nothing_is_submitted(tmp_path):
    sweep_dir, queue = tmp_path / "sweep", squeue_ids()
    result = subprocess.run([sys.executable, "-m", "jobs.train", "-m", "cluster=slurm",
                             "train.global_batch_size=64,128,16384", f"hydra.sweep.dir={sweep_dir}"], cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()  # one line, then one per member refused
    assert lines[0] == "error: 1 of 3 sweep member(s) would fail, nothing was submitted:", lines
    assert len(lines) == 2 and lines[1].startswith("  member 2 (cluster=slurm train.global_batch_size=16384): "
                                                   "the dataset has 8192 samples, fewer than one global batch"), lines
    assert not squeue_ids() - queue and not sweep_dir.exists()
