"""Requeue budgets and causes on the real local Slurm cluster: a spent budget ends the job FAILED with the reason in
its Slurm comment, a bug met twice at the same step is not retried again, an array task is requeued as itself, a
cancelled one says so, and the job's own ``setup``, ``additional`` flags and ``signal`` reach Slurm."""

import json
import subprocess
from pathlib import Path

import pytest

from cluster.rundir import read_events
from tests.helpers import cli, events_named, last_step, read_manifest, run_sweep, run_train, wait_done, wait_until
from tests.slurm.test_requeue_slurm import preempt_everything
from tests.slurm.test_run_dir_safety import left_queue, sacct, submitted_job

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("slurm_cluster")]
FAULTY = ("model._target_=tests.scripts.faulty_node.make_model",)


@pytest.mark.parametrize("overrides, reason", [
    # the model raises in its 40th forward: a failure, with no retry left
    ((*FAULTY, "model.fail_at=40", "train.steps=100", "requeue.failure=0"),
     "failure budget of 0 requeue(s) spent (requeue.failure=0)"),
    # a 1-minute limit whose warning comes 45 s before the end, and no requeue left for a time limit
    (("train.steps=1000000", "cluster.timeout_min=1", "cluster.signal_lead_s=45", "requeue.time_limit=0"),
     "time_limit budget of 0 requeue(s) spent (requeue.time_limit=0)"),
], ids=["failure", "time-limit"])
def test_a_spent_budget_ends_the_job_failed_with_the_reason_in_its_slurm_comment(tmp_path, overrides, reason):
    job = submitted_job(run_train("cluster=slurm", *overrides, f"hydra.run.dir={tmp_path}"))
    left_queue(job, timeout=180)
    assert sacct(job, "State") == "FAILED"
    assert reason in sacct(job, "Comment")
    final = [e for e in events_named(tmp_path, "failed") if e["kind"] == "final"]
    assert final and reason in final[0]["reason"] and not events_named(tmp_path, "requeued")
    status = json.loads(cli("status", str(tmp_path), "--json").stdout)["members"][0]
    assert status["state"] == "FAILED" and reason in status["error"], status


def test_the_same_exception_at_the_same_step_twice_is_not_retried_again(tmp_path):
    # Two retries in the budget; no checkpoint before step 40, so the retry meets the bug at the same step.
    job = submitted_job(run_train("cluster=slurm", *FAULTY, "model.fail_at=40", "train.steps=100",
                                  "requeue.failure=2", f"hydra.run.dir={tmp_path}"))
    left_queue(job, timeout=240)
    failed = [e for e in events_named(tmp_path, "failed") if e["kind"] == "exception"]
    assert [e["restart"] for e in failed] == [0, 1] and failed[0]["step"] == failed[1]["step"], failed
    assert "injected fault in forward 40" in failed[0]["error"]
    assert sacct(job, "State") == "FAILED"
    assert f"the same exception at step {failed[0]['step']} twice" in sacct(job, "Comment")
    assert [e["cause"] for e in events_named(tmp_path, "requeued")] == ["failure"]  # once, not twice
    assert sorted({e["restart"] for e in read_events(tmp_path)}) == [0, 1]


def test_preempted_array_tasks_are_requeued_as_themselves_and_a_cancelled_one_says_so(tmp_path):
    # The job's own setup lines (each start of each member appends its restart count), a further sbatch flag
    # (--nice) and USR1 as the warning signal, all through Slurm.
    setup = f'cluster.setup=["echo start-$SLURM_RESTART_COUNT >> {tmp_path}/setup-$SLURM_ARRAY_TASK_ID"]'
    result, _ = run_sweep(tmp_path, "cluster=slurm", "cluster.tasks_per_node=2", "train.steps=2000",
                          "train.log_every_steps=20", "train.checkpoint_every_steps=500", "cluster.signal=USR1",
                          setup, "+cluster.additional.nice=7", "train.seed=0,1")
    members = read_manifest(tmp_path)["members"]
    (array,) = {m["job_id"] for m in members}
    runs = [Path(m["run_dir"]) for m in members]
    fields = subprocess.run(["scontrol", "show", "job", f"{array}_0"], capture_output=True, text=True).stdout
    assert "Nice=7" in fields, fields
    wait_until(lambda: all(last_step(run) >= 200 for run in runs), timeout=120, what="both members at step 200")
    preempt_everything()
    wait_until(lambda: all(events_named(run, "resumed") for run in runs), timeout=180, what="both members resumed")
    for run in runs:
        signalled = events_named(run, "signalled")
        assert (signalled[0]["cause"], signalled[0]["signal"]) == ("preemption", "USR1"), signalled
        assert events_named(run, "requeued")[0]["cause"] == "preemption"
        assert events_named(run, "resumed")[0]["step"] == signalled[0]["step"]
    assert read_manifest(tmp_path)["members"] == members  # the same array tasks came back, nothing resubmitted

    resumed_at = events_named(runs[1], "resumed")[0]["step"]
    wait_until(lambda: last_step(runs[1]) >= resumed_at + 100, timeout=120, what="member 1 training again")
    assert cli("cancel", str(tmp_path), "1").returncode == 0
    status = wait_done(tmp_path, timeout=240)
    assert [(m["state"], m["restarts"]) for m in status["members"]] == [("COMPLETED", 1), ("CANCELLED", 1)], status
    assert status["exit"] == 1
    cancelled = events_named(runs[1], "signalled")[-1]
    assert cancelled["cause"] == "cancelled" and events_named(runs[1], "cancelled")[0]["step"] == cancelled["step"]
    assert (runs[1] / "checkpoints" / f"step-{cancelled['step']:06d}").is_dir()  # saved as it was cancelled
    assert len(events_named(runs[1], "requeued")) == 1  # not requeued by us after the cancel
    for task in (0, 1):  # the setup lines ran before each start of each member (no restart count at first)
        assert (tmp_path / f"setup-{task}").read_text().split() == ["start-", "start-1"]
