"""``cluster=local`` sweeps: a queue that returns the prompt, runs a few members at a time on their own
CPUs, and answers to status, cancel, retry and collect like a Slurm sweep."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cluster.local.watchdog import process_alive
from cluster.sweep.local_queue import cpu_shares
from tests.helpers import REPO, cli, read_manifest, run_sweep, wait_done

pytestmark = pytest.mark.slow


def queue_states(sweep_dir: Path) -> dict[int, dict]:
    return {int(path.stem): json.loads(path.read_text()) for path in (sweep_dir / "queue").glob("*.json")}


def most_at_once(states: dict[int, dict]) -> int:
    """The largest number of members whose [start, end) times overlap."""
    edges = sorted([(s["started_at"], 1) for s in states.values()] + [(s["ended_at"], -1) for s in states.values()])
    running = peak = 0
    for _, change in edges:
        running += change
        peak = max(peak, running)
    return peak


def cpus_of(sweep_dir: Path, index: int) -> set[int]:
    """The CPUs the queue gave the member, as its own process printed them."""
    first = (sweep_dir / "logs" / f"local_{index}.log").read_text().splitlines()[0]
    return set(json.loads(first.split(" on CPUs ")[1]))


def sweep_processes(sweep_dir: Path) -> list[str]:
    return subprocess.run(["pgrep", "-af", str(sweep_dir)], capture_output=True, text=True).stdout.splitlines()


def test_a_local_sweep_returns_at_once_runs_two_at_a_time_and_is_retried_and_collected(tmp_path):
    result, _ = run_sweep(tmp_path, "cluster=local", "cluster.tasks_per_node=1", "train.steps=30",
                          "optim.lr=0.05,0.1,0.2,1e6", "hydra.launcher.local_parallelism=2")
    assert "submitted 4 member(s) to a local queue" in result.stdout and "2 at a time" in result.stdout
    first = cli("status", str(tmp_path), "--json")
    assert first.returncode == 3  # the prompt came back while members were still queued or running
    assert set(json.loads(first.stdout)["counts"]) <= {"PENDING", "RUNNING", "COMPLETED"}

    status = wait_done(tmp_path, timeout=240)
    states = {m["member"]: m["state"] for m in status["members"]}
    assert states == {0: "COMPLETED", 1: "COMPLETED", 2: "COMPLETED", 3: "FAILED"} and status["exit"] == 1
    assert "training diverged" in status["members"][3]["error"]
    assert status["source"].startswith("the local queue") and status["members"][0]["step"] == 30
    queue = queue_states(tmp_path)
    assert most_at_once(queue) == 2
    together = [(a, b) for a in queue for b in queue if a < b
                and queue[a]["started_at"] < queue[b]["ended_at"] and queue[b]["started_at"] < queue[a]["ended_at"]]
    # Members running side by side got the two halves of the CPUs (one CPU both, on a machine with one).
    halves = {frozenset(share) for share in cpu_shares(sorted(os.sched_getaffinity(0)), 2)}
    assert together
    for a, b in together:
        assert {frozenset(cpus_of(tmp_path, a)), frozenset(cpus_of(tmp_path, b))} == halves

    log = cli("logs", str(tmp_path), "3")
    assert "member 3:" in log.stdout and "TaskFailedError" in log.stdout

    before = read_manifest(tmp_path)["members"]
    retried = cli("retry", str(tmp_path), "--failed")
    assert retried.returncode == 3 and "resubmitted member(s) 3 to a new local queue" in retried.stdout
    after = read_manifest(tmp_path)["members"]
    assert after[:3] == before[:3] and len(after[3]["attempts"]) == len(before[3]["attempts"]) + 1
    again = wait_done(tmp_path, timeout=120)
    assert again["members"][3]["state"] == "FAILED" and again["members"][3]["restarts"] == 1
    assert queue_states(tmp_path)[0] == queue[0]  # the others were not run again

    collected = cli("collect", str(tmp_path))
    assert collected.returncode == 0 and "best by final_loss (min): member" in collected.stdout
    assert len((tmp_path / "results.csv").read_text().splitlines()) == 1 + 3


def test_cancel_stops_running_and_pending_members_and_a_lost_queue_is_retried(tmp_path):
    run_sweep(tmp_path, "cluster=local", "cluster.tasks_per_node=1", "train.steps=100000",
              "train.seed=0,1,2")  # one at a time, the default
    cancelled = cli("cancel", str(tmp_path), "1")
    assert cancelled.returncode == 0 and "cancelled member(s) 1" in cancelled.stdout
    deadline = time.monotonic() + 60
    while queue_states(tmp_path)[0]["state"] != "RUNNING" and time.monotonic() < deadline:
        time.sleep(0.5)
    queue = queue_states(tmp_path)
    assert [queue[i]["state"] for i in range(3)] == ["RUNNING", "CANCELLED", "PENDING"]

    os.kill(queue[0]["queue_pid"], signal.SIGKILL)  # the queue dies (a reboot, an OOM kill)
    deadline = time.monotonic() + 30
    while process_alive(queue[0]["pid"]) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not process_alive(queue[0]["pid"]), "a member outlived its queue"
    lost = json.loads(cli("status", str(tmp_path), "--json").stdout)
    assert [m["state"] for m in lost["members"]] == ["NODE_FAIL", "CANCELLED", "NODE_FAIL"]
    assert not (tmp_path / "1" / "events.jsonl").exists()  # cancelled before it started: never ran

    retried = cli("retry", str(tmp_path))
    assert "resubmitted member(s) 0-2 to a new local queue" in retried.stdout
    assert cli("cancel", str(tmp_path)).returncode == 0
    ended = wait_done(tmp_path, timeout=60)
    assert [m["state"] for m in ended["members"]] == ["CANCELLED"] * 3 and ended["exit"] == 1
    deadline = time.monotonic() + 15  # the queue sees the cancel on its next poll, ranks their parent gone
    while (survivors := sweep_processes(tmp_path)) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not survivors, f"processes of the sweep still alive: {survivors}"


def test_logs_follow_a_rank_a_retry_runs_members_side_by_side_and_a_sweep_that_completed_is_status_0(tmp_path):
    run_sweep(tmp_path, "cluster=local", "cluster.tasks_per_node=2", "train.steps=600", "train.log_every_steps=50",
              "train.seed=0,1,2,3")  # one member at a time, the default
    assert cli("cancel", str(tmp_path), "1", "2", "3").returncode == 0  # still pending: never started
    # Retried while the first queue still runs member 0: the new queue runs two at a time, and the first queue,
    # once member 0 ends, must leave member 3 (pending in the new queue) alone.
    retried = cli("retry", str(tmp_path), "--parallelism", "2")
    assert "resubmitted member(s) 1-3 to a new local queue" in retried.stdout, retried.stdout + retried.stderr
    log = tmp_path / "0" / "logs"
    deadline = time.monotonic() + 60
    while not list(log.glob("*_0_log.out")) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "Job completed" not in next(log.glob("*_0_log.out")).read_text(), "member 0 ended before the follow began"
    with subprocess.Popen([sys.executable, "-m", "cluster", "logs", str(tmp_path), "0", "--follow"], cwd=REPO,
                          stdout=subprocess.PIPE, text=True) as follow:
        seen = []
        for line in follow.stdout:  # what the rank writes from now on comes through, up to its end
            seen.append(line)
            if "Job completed successfully" in line:
                break
        follow.kill()
    assert any(line.startswith("step 600/600") for line in seen), seen
    rank_1 = cli("logs", str(tmp_path), "0", "--rank", "1")
    assert rank_1.returncode == 0 and "global_rank=1(2)" in rank_1.stdout and "global_rank=0" not in rank_1.stdout

    done = wait_done(tmp_path, timeout=240)
    assert done["exit"] == 0 and [m["state"] for m in done["members"]] == ["COMPLETED"] * 4, done
    queue = queue_states(tmp_path)
    assert most_at_once({i: queue[i] for i in (1, 2, 3)}) == 2, queue  # two at a time, never three
    assert queue[1]["queue_pid"] == queue[2]["queue_pid"] == queue[3]["queue_pid"] != queue[0]["queue_pid"], queue

    speeds = {i: json.loads((tmp_path / str(i) / "summary.json").read_text())["samples_per_s"] for i in range(4)}
    fastest = max(speeds, key=speeds.get)
    collected = cli("collect", str(tmp_path), "--metric", "samples_per_s", "--mode", "max")
    assert collected.returncode == 0 and f"best by samples_per_s (max): member {fastest} " in collected.stdout, \
        collected.stdout


def test_a_sweep_over_both_kinds_of_cluster_is_refused_before_anything_runs(tmp_path):
    result = subprocess.run([sys.executable, "-m", "jobs.train", "-m", "cluster=local,debug",
                             f"hydra.sweep.dir={tmp_path}"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "a sweep runs on cluster=slurm or cluster=local, got cluster=debug,local" in result.stderr
    assert not (tmp_path / "manifest.json").exists()


def test_submitting_a_sweep_needs_no_torch():
    """torch takes seconds to import on a login node; the members import it where they run."""
    code = ("import sys, jobs.train, jobs.sweep, cluster.cli, cluster.sweep.local_queue, "
            "hydra_plugins.clusterjobs_launcher.clusterjobs_launcher\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'torchvision')))")
    loaded = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert loaded.stdout.strip() == "[]"
