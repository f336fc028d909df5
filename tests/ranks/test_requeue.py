"""The stop protocol's decisions: causes read from Slurm's answers, budgets, and failed writes in a run; and the
protocol whole under submitit's local executor."""

import datetime
import json
import os
import random
import resource
import signal
import subprocess
import sys

import pytest

from cluster.environment import SINGLE_PROCESS, TaskEnvironment
from cluster.requeue import (
    RequeueBudget,
    budget_left,
    signal_cause,
    spent,
    unexplained_end,
)
from cluster.rundir import EventLog, read_events
from cluster.runtime.supervisor import is_peer_failure
from cluster.slurm.commands import own_job_id
from jobs.settings import Requeue
from jobs.user_errors import config_key
from tests.helpers import (
    INTERRUPTIBLE_RUN,
    REPO,
    events_named,
    last_step,
    rank_pids,
    read_summary,
    run_train,
    wait_until,
)

SLURM = TaskEnvironment(started_by="slurm", rank=0, local_rank=0, world_size=2, node_rank=0, num_nodes=2,
                        master_addr="node1", master_port=20000, job_id="39", restart_count=0)
NOW = datetime.datetime(2026, 11, 23, 1, 18, 0)
# `scontrol show job` fields seen in a task's signal handler on the local cluster (tests/slurm/test_requeue_slurm.py)
PREEMPTED = {"JobState": "RUNNING", "Restarts": "0", "EndTime": "2026-11-23T01:18:09",
             "PreemptTime": "2026-11-23T01:17:59"}
TIME_LIMIT = {"JobState": "RUNNING", "Restarts": "0", "EndTime": "2026-11-23T01:18:32", "PreemptTime": "None"}
REQUEUED = {"JobState": "COMPLETING", "Restarts": "1", "EndTime": "2026-11-23T01:32:20"}
CANCELLED = {"JobState": "COMPLETING", "Restarts": "0", "EndTime": "2026-11-23T01:22:20", "PreemptTime": "None"}
# preempted, its state already past RUNNING when asked: still a preemption (PreemptTime is cleared by a requeue)
PREEMPTED_ENDING = {**PREEMPTED, "JobState": "COMPLETING"}
BY_HAND = {"JobState": "RUNNING", "Restarts": "0", "EndTime": "2026-11-23T02:18:00", "PreemptTime": "None"}


@pytest.mark.parametrize("fields, cause", [
    (PREEMPTED, "preemption"), (PREEMPTED_ENDING, "preemption"), (TIME_LIMIT, "time-limit"),
    (REQUEUED, "requeued"), (CANCELLED, "cancelled"),
    (BY_HAND, "signal"), ({}, "signal"),
])
def test_cause_is_read_from_slurm_not_guessed(fields, cause):
    assert signal_cause(SLURM, lead_s=40, fields=fields, now=NOW) == cause


def test_local_executor_warning_near_its_timeout_is_the_time_limit():
    local = SLURM.__class__(**{**SLURM.__dict__, "started_by": "local"})
    assert signal_cause(local, lead_s=30, started_s=575, local_timeout_s=600) == "time-limit"
    assert signal_cause(local, lead_s=30, started_s=100, local_timeout_s=600) == "signal"
    assert signal_cause(SINGLE_PROCESS, lead_s=30) == "signal"


def test_budgets_count_runs_not_ranks(tmp_path):
    for rank in (0, 1):  # both ranks of one run report the same retry
        EventLog(tmp_path, rank=rank, job="7", restart=0).record("requeued", cause="failure")
    EventLog(tmp_path, rank=0, job="7", restart=1).record("requeued", cause="time-limit")
    EventLog(tmp_path, rank=0, job="7", restart=2).record("lost", cause="lost")
    events = read_events(tmp_path)
    assert spent(events, "failure") == 2 and spent(events, "time_limit") == 1 and spent(events, "preemption") == 0
    assert budget_left(RequeueBudget(failure=2), events, "failure") == (
        False, "failure budget of 2 requeue(s) spent (failure=2)")
    assert budget_left(RequeueBudget(failure=2), events, "failure", config_key)[1].endswith("(requeue.failure=2)")
    assert budget_left(RequeueBudget(time_limit=3), events, "time-limit") == (True, "time_limit requeue 2 of 3")
    assert budget_left(RequeueBudget(), events, "preemption") == (True, "preemption requeue 1 (no limit)")


def test_a_run_that_ended_without_a_word_is_noticed(tmp_path):
    EventLog(tmp_path, rank=0, job="7", restart=0).record("started")
    EventLog(tmp_path, rank=0, job="7", restart=0).record("checkpointed", step=100)
    assert unexplained_end(read_events(tmp_path), "7", 1)["event"] == "checkpointed"
    EventLog(tmp_path, rank=0, job="7", restart=1).record("requeued", cause="preemption")
    assert unexplained_end(read_events(tmp_path), "7", 2) is None


def test_requeue_names_array_tasks_by_array_and_index():
    assert own_job_id({"SLURM_JOB_ID": "105", "SLURM_ARRAY_JOB_ID": "100", "SLURM_ARRAY_TASK_ID": "5"}) == "100_5"
    assert own_job_id({"SLURM_JOB_ID": "105"}) == "105"


def test_peer_failures_are_told_from_own_exceptions():
    assert is_peer_failure(RuntimeError("[gloo/transport/tcp/pair.cc:545] Read error: Connection reset by peer"))
    assert not is_peer_failure(ValueError("bad value"))
    assert not is_peer_failure(RuntimeError("mat1 and mat2 shapes cannot be multiplied"))


def test_bad_budget_is_refused():
    with pytest.raises(ValueError, match="^failure=-2 must be a count >= 0, or -1 for no limit"):
        RequeueBudget(failure=-2)
    with pytest.raises(ValueError, match="^requeue.failure=-2 must be a count >= 0, or -1 for no limit"):
        Requeue(failure=-2)  # the trainer's requeue.* settings


@pytest.mark.slow
def test_failed_checkpoint_write_keeps_the_previous_one_and_is_reported(tmp_path):
    short = ("cluster=debug", "train.global_batch_size=64", "train.checkpoint_every_steps=5", "train.log_every_steps=5")
    run_train(*short, "train.steps=10", f"hydra.run.dir={tmp_path}")

    def small_disk():  # every file may grow to 100 kB: the metrics fit, a checkpoint (~800 kB) does not
        resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, resource.RLIM_INFINITY))

    result = run_train(*short, "train.steps=20", f"hydra.run.dir={tmp_path}", preexec_fn=small_disk, check=False)
    assert "warning: checkpoint at step 15 failed (" in result.stdout
    assert "check the free space, quota and permissions there)" in result.stdout
    # The final state exists nowhere: the run has not succeeded, and says so.
    assert result.returncode != 0 and "error: the checkpoint at step 20 could not be written" in result.stderr
    checkpoints = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert checkpoints == ["step-000005", "step-000010"]  # no half-written folder left
    assert read_summary(tmp_path)["steps"] == 10  # the summary is still the first run's
    failed = [e for e in read_events(tmp_path) if e["event"] == "checkpoint-failed"]
    assert [e["step"] for e in failed] == [15, 20]


@pytest.mark.slow
def test_local_executor_rehearses_preemption(tmp_path, reference, cpu_only_env):
    """The protocol of tests/slurm/test_requeue_slurm.py under submitit's local executor: USR2 to one rank, at a
    random step."""
    expected = reference(*INTERRUPTIBLE_RUN)
    local = ("cluster=local", "cluster.tasks_per_node=2")
    command = [sys.executable, "-m", "jobs.train", *local, *INTERRUPTIBLE_RUN, f"hydra.run.dir={tmp_path}"]
    with subprocess.Popen(command, cwd=REPO, env=cpu_only_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True) as launcher:
        at = random.Random().randint(300, 1000)
        wait_until(lambda: last_step(tmp_path) >= at, timeout=120, what=f"step {at}")
        os.kill(rank_pids(tmp_path / "logs")[1], signal.SIGUSR2)  # only one rank hears it
        out, err = launcher.communicate(timeout=240)
    assert launcher.returncode == 0, err
    assert "done: 1500 steps" in out
    summary = read_summary(tmp_path)
    assert summary["param_digest"] == expected.result()
    signalled = events_named(tmp_path, "signalled")
    assert signalled[0]["cause"] == "signal" and events_named(tmp_path, "requeued")[0]["cause"] == "signal"
    assert summary["resumed_from_step"] == signalled[0]["step"] >= at
    assert [e["restart"] for e in events_named(tmp_path, "started")] == [0, 1]


@pytest.mark.slow
def test_job_over_its_budget_ends_with_the_reason(tmp_path, cpu_only_env):
    """requeue.preemption=0: the first warning saves, and the job ends FAILED with why, instead of coming back."""
    # signal_lead_s=0: no save can fit between the warning and the end, which the run must say
    command = [sys.executable, "-m", "jobs.train", "cluster=local", "cluster.tasks_per_node=2", *INTERRUPTIBLE_RUN,
               "requeue.preemption=0", "cluster.signal_lead_s=0", f"hydra.run.dir={tmp_path}"]
    with subprocess.Popen(command, cwd=REPO, env=cpu_only_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True) as launcher:
        wait_until(lambda: last_step(tmp_path) >= 300, timeout=120, what="step 300")
        os.kill(rank_pids(tmp_path / "logs")[0], signal.SIGUSR2)
        out, err = launcher.communicate(timeout=120)
    assert launcher.returncode == 1
    assert "job ends: stopped by signal at step" in err and "preemption budget of 0 requeue(s) spent" in err, err
    final = [e for e in events_named(tmp_path, "failed") if e["kind"] == "final"]
    assert final and "requeue.preemption=0" in final[0]["reason"]
    step = events_named(tmp_path, "signalled")[0]["step"]
    assert (tmp_path / "checkpoints" / f"step-{step:06d}").is_dir()  # the work is saved all the same
    assert not (tmp_path / "summary.json").exists()
    warning = events_named(tmp_path, "warning")[0]["reason"]
    assert "longer than the 0 s between the warning signal and the end" in warning
    assert "raise cluster.signal_lead_s" in warning


@pytest.mark.slow
def test_a_warning_during_an_evaluation_abandons_it_and_the_step_is_saved_at_once(tmp_path, cpu_only_env):
    """An evaluation of 512 samples a rank, each read in 5 ms (~2.6 s): USR2 to one rank once it has begun. The
    ranks give it up within a batch, save the step and come back (the local executor's requeue); the next run
    evaluates at its end, whole."""
    from jobs.data import held_out

    log = tmp_path / "log"
    log.mkdir()
    validation = set(held_out(2048, 0.5)[1])
    command = [sys.executable, "-m", "jobs.train", "cluster=local", "cluster.tasks_per_node=2",
               "data._target_=tests.scripts.logged_data.make_dataset", f"data.log={log}", "data.size=2048",
               "data.delay_ms=5", "data.val_fraction=0.5", "train.steps=10", "train.global_batch_size=32",
               "train.eval_every_steps=5", "train.log_every_steps=1", f"hydra.run.dir={tmp_path / 'run'}"]

    def evaluating() -> bool:  # more held-out samples read than the loader's look at the first three
        return any(sum(int(i) in validation for i in file.read_text().split()) > 10 for file in log.glob("*.txt"))

    with subprocess.Popen(command, cwd=REPO, env=cpu_only_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True) as launcher:
        wait_until(evaluating, timeout=120, what="the evaluation at step 5", poll=0.05)
        os.kill(rank_pids(tmp_path / "run" / "logs")[1], signal.SIGUSR2)  # only one rank hears it
        out, err = launcher.communicate(timeout=240)
    assert launcher.returncode == 0, err
    run = tmp_path / "run"
    abandoned, signalled = events_named(run, "evaluation-abandoned"), events_named(run, "signalled")
    assert [e["step"] for e in abandoned] == [5] and signalled[0]["step"] == 5, (abandoned, signalled)
    assert signalled[0]["seconds_to_saved"] < 1.0, signalled  # the whole evaluation lasts ~2.6 s
    assert events_named(run, "resumed")[0]["step"] == 5
    evaluated = [r["step"] for r in (json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines())
                 if "val_loss" in r]
    assert evaluated == [10] and "val_loss" in read_summary(run)
