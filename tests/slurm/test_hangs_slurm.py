"""Hangs and bad nodes on the real local Slurm cluster: a frozen rank ends its job within ``hang_timeout_s``, named
with its node; a node a failure implicated is kept out of the requeued job; and every job still ends with the
digest of an uninterrupted run."""

import os
import signal
import time

import pytest

from cluster.slurm.hostlist import expand_hostlist
from tests.slurm.test_requeue_slurm import (
    RUN,
    events_named,
    last_step,
    rank_pids,
    reference,  # noqa: F401  (a fixture)
    submit,
    wait_finished,
    wait_until,
)

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("slurm_cluster")]
HANG_TIMEOUT_S = 20


def node_of(pid: int) -> str:
    """The node (network namespace) a rank runs in, as Slurm names it."""
    environ = dict(item.split("=", 1) for item in open(f"/proc/{pid}/environ").read().split("\0") if "=" in item)
    return environ["SLURMD_NODENAME"]


def nodes_of_run(run_dir, restart: int) -> list[str]:
    started = [e for e in events_named(run_dir, "started") if e["restart"] == restart]
    return expand_hostlist(started[0]["nodelist"])


def test_a_frozen_rank_ends_the_job_in_time_and_the_requeued_job_runs_without_its_node(tmp_path, reference):  # noqa: F811
    job = submit(tmp_path, *RUN, f"distributed.hang_timeout_s={HANG_TIMEOUT_S}")
    wait_until(lambda: last_step(tmp_path) >= 1200, timeout=120, what="step 1200")
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
    assert summary["param_digest"] == reference(*RUN)
