"""Hangs and bad nodes on the real local Slurm cluster: a frozen rank ends its job within ``hang_timeout_s``, named
with its node; a node a failure implicated is kept out of the requeued job; and every job still ends with the
digest of an uninterrupted run."""

import os
import signal
import subprocess
import sys
import time

import pytest

from cluster.rundir import read_events
from cluster.slurm.hostlist import expand_hostlist
from tests.helpers import INTERRUPTIBLE_RUN, REPO, events_named, last_step, rank_pids, wait_until
from tests.slurm.test_requeue_slurm import submit, wait_finished

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("slurm_cluster")]
HANG_TIMEOUT_S = 10


def node_of(pid: int) -> str:
    """The node (network namespace) a rank runs in, as Slurm names it."""
    environ = dict(item.split("=", 1) for item in open(f"/proc/{pid}/environ").read().split("\0") if "=" in item)
    return environ["SLURMD_NODENAME"]


def nodes_of_run(run_dir, restart: int) -> list[str]:
    started = [e for e in events_named(run_dir, "started") if e["restart"] == restart]
    return expand_hostlist(started[0]["nodelist"])


def test_a_frozen_rank_ends_the_job_in_time_and_the_requeued_job_runs_without_its_node(tmp_path, reference):
    expected = reference(*INTERRUPTIBLE_RUN)
    job = submit(tmp_path, *INTERRUPTIBLE_RUN, f"distributed.hang_timeout_s={HANG_TIMEOUT_S}")
    # Late (checkpoints every 500 steps): the next run resumes from step 1000, little left to train.
    wait_until(lambda: last_step(tmp_path) >= 1100, timeout=120, what="step 1100")
    frozen = rank_pids(tmp_path)[0]  # rank 0: the hardest one, it holds the job's TCP store and writes the events
    node = node_of(frozen)
    os.kill(frozen, signal.SIGSTOP)
    frozen_at = time.monotonic()
    hung = wait_until(lambda: events_named(tmp_path, "hung"), timeout=HANG_TIMEOUT_S + 45, what="the hang")
    detected_s = time.monotonic() - frozen_at
    wait_until(lambda: events_named(tmp_path, "requeued"), timeout=30, what="the requeue")
    requeued_s = time.monotonic() - frozen_at
    wait_until(lambda: [e for e in events_named(tmp_path, "started") if e["restart"] == 1], timeout=180,
               what="the next run")
    again_s = time.monotonic() - frozen_at
    summary = wait_finished(job, tmp_path, timeout=300)
    print(f"frozen rank 0 on {node}: hang recorded after {detected_s:.1f} s, requeued after {requeued_s:.1f} s, "
          f"the next run started after {again_s:.1f} s")
    assert detected_s < HANG_TIMEOUT_S + 15
    assert hung[0]["kind"] == "silent" and hung[0]["ranks"] == [0] and hung[0]["nodes"] == [node], hung
    # Only that node: Slurm wakes the frozen rank (SIGCONT) as it ends the job, and it must not blame the others.
    assert [e["nodes"] for e in events_named(tmp_path, "excluded")] == [[node]]
    assert events_named(tmp_path, "requeued")[0]["cause"] == "hang"
    assert events_named(tmp_path, "requeued")[0]["excluded"] == [node]
    assert node in nodes_of_run(tmp_path, 0) and node not in nodes_of_run(tmp_path, 1)
    assert summary["param_digest"] == expected.result()
    status = subprocess.run([sys.executable, "-m", "cluster", "status", str(tmp_path)], cwd=REPO, capture_output=True,
                            text=True, timeout=60).stdout
    assert f"hung at step {hung[0]['step']}: rank 0 on {node} sent no heartbeat for" in status, status
    assert f"keeps out bad node(s): {node}" in status, status


def test_a_node_that_kills_its_rank_is_kept_out_and_the_job_ends_as_an_uninterrupted_run(tmp_path, reference):
    expected = reference(*INTERRUPTIBLE_RUN)
    # The model's process dies whenever it runs on the node named in crash_node (from the test, once the job runs).
    # With one retry in the budget, the job can end well only if that node is not given to it again. The model is
    # model=mlp built the same way: INTERRUPTIBLE_RUN's reference digest holds.
    crash_node = tmp_path / "crash_node"
    work = (*INTERRUPTIBLE_RUN, "model._target_=tests.scripts.faulty_node.make_model", f"model.crash_file={crash_node}",
            "model.after=300", "requeue.failure=1", "distributed.hang_timeout_s=30", "distributed.timeout_s=120")
    job = submit(tmp_path / "run", *work)
    wait_until(lambda: last_step(tmp_path / "run") >= 900, timeout=120, what="step 900")
    node = nodes_of_run(tmp_path / "run", 0)[1]  # rank 1's
    crash_node.write_text(node)
    crashed_at = time.monotonic()
    wait_until(lambda: events_named(tmp_path / "run", "requeued"), timeout=90, what="the retry")
    retried_s = time.monotonic() - crashed_at
    print(f"rank 1 on {node} killed; requeued {retried_s:.1f} s after the crash file appeared")
    # Within a few heartbeats (the model looks at the file every 300 steps, ~2 s), not the collective timeout.
    assert retried_s < 30
    summary = wait_finished(job, tmp_path / "run", timeout=300)
    failed = [e for e in events_named(tmp_path / "run", "failed") if e.get("suspects")]
    assert failed and failed[0]["rank"] == 0 and failed[0]["kind"] == "peer" and failed[0]["suspects"] == [node]
    assert [e["nodes"] for e in events_named(tmp_path / "run", "excluded")] == [[node]]
    assert node not in nodes_of_run(tmp_path / "run", 1)
    assert summary["param_digest"] == expected.result()


def test_a_node_whose_slurmd_dies_is_kept_out_and_returns_to_service_afterwards(tmp_path, reference):
    expected = reference(*INTERRUPTIBLE_RUN)
    # 40 ms more a step in the first run (a minute): long enough for Slurm to declare the node down
    # (SlurmdTimeout=30 s).
    # The faulty node's model is model=mlp built the same way: INTERRUPTIBLE_RUN's reference digest holds.
    work = (*INTERRUPTIBLE_RUN, "model._target_=tests.scripts.faulty_node.make_model", "model.slurm_step_ms=40")
    job = submit(tmp_path, *work)
    wait_until(lambda: last_step(tmp_path) >= 200, timeout=120, what="step 200")
    node = nodes_of_run(tmp_path, 0)[1]  # rank 1's: not the node that runs the batch script
    try:
        os.kill(int(open(f"/run/slurmd-{node}.pid").read()), signal.SIGKILL)
        lost_at = time.monotonic()
        # Slurm declares the node DOWN after SlurmdTimeout (30 s on the local cluster) and requeues the job.
        wait_until(lambda: [e for e in events_named(tmp_path, "started") if e["restart"] == 1], timeout=150,
                   what="the run after the node was lost")
        print(f"slurmd of {node} killed; the next run started {time.monotonic() - lost_at:.1f} s later")
        summary = wait_finished(job, tmp_path, timeout=300)
    finally:
        subprocess.run([str(REPO / "slurm" / "local-cluster"), "up"], check=True, capture_output=True, timeout=180)
    # Slurm requeued the job from outside (as `scontrol requeue` does): SIGTERM KillWait seconds before SIGKILL, and
    # the ranks saved the step they were at and left the rest to Slurm; the next run began there.
    signalled = events_named(tmp_path, "signalled")
    assert signalled and signalled[0]["cause"] == "requeued" and signalled[0]["signal"] == "TERM", signalled
    assert summary["resumed_from_step"] == signalled[0]["step"]
    excluded = events_named(tmp_path, "excluded")
    assert [e["nodes"] for e in excluded] == [[node]] and "Slurm lost it" in excluded[0]["reason"], excluded
    assert node not in nodes_of_run(tmp_path, 1)
    assert summary["param_digest"] == expected.result()
    back = wait_until(lambda: subprocess.run(["sinfo", "-h", "-n", node, "-o", "%t"], capture_output=True,
                                             text=True).stdout.split()[:1] == ["idle"], timeout=60,
                      what=f"{node} back in service")
    assert back


def test_the_health_check_keeps_a_broken_node_out_before_any_training_step(tmp_path, reference, monkeypatch):
    work = ("train.steps=200", "train.global_batch_size=64", "train.checkpoint_every_steps=100")
    expected = reference(*work)
    # The check fails on node1 and node2 (as a broken GPU or network would make it): whichever of them the job gets
    # first is kept out, and the job trains on node3 and node4 only.
    monkeypatch.setenv("CLUSTERJOBS_HEALTH_FAIL", "node1,node2")
    job = submit(tmp_path, *work, "cluster.health_check=true")
    summary = wait_finished(job, tmp_path, timeout=240)
    health = events_named(tmp_path, "health")
    assert health and health[0]["bad"] and set(health[0]["bad"]) <= {"node1", "node2"}, health
    assert "failed on purpose (CLUSTERJOBS_HEALTH_FAIL)" in next(iter(health[0]["bad"].values()))
    excluded = sorted(node for e in events_named(tmp_path, "excluded") for node in e["nodes"])
    assert set(excluded) == {node for e in health for node in e["bad"]}
    assert {e["cause"] for e in events_named(tmp_path, "requeued")} == {"health"}
    last = max(e["restart"] for e in events_named(tmp_path, "started"))
    assert set(nodes_of_run(tmp_path, last)) == {"node3", "node4"}
    trained_before = [e for e in read_events(tmp_path) if e["restart"] < last and e["event"] == "checkpointed"]
    assert not trained_before and summary["resumed_from_step"] == 0  # no training time spent on a bad node
    assert summary["param_digest"] == expected.result()
