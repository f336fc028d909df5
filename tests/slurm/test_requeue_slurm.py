"""Preemption, requeue, time limits and crashes on the real local Slurm cluster (the local executor's rehearsal
of them is in ``tests/ranks/test_requeue.py``).

Every scenario ends with the same parameter digest as an uninterrupted run of the same config.
"""

import json
import os
import random
import signal
import subprocess
from pathlib import Path

import pytest

from cluster.rundir import read_events
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

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("slurm_cluster")]
TWO_NODES = ("cluster=slurm", "cluster.nodes=2", "cluster.timeout_min=10")
# dp 2 x pp 2 over 2 nodes x 2 tasks: ~20 steps/s here, so 800 steps leave time to preempt it.
HYBRID = ("model=transformer", "model.depth=2", "data.image_shape=[1,8,8]", "strategy=hybrid", "train.steps=800",
          "train.global_batch_size=64", "train.log_every_steps=10", "train.checkpoint_every_steps=200")


def submit(run_dir: Path, *overrides: str, tasks_per_node: int = 1) -> str:
    result = run_train(*TWO_NODES, f"cluster.tasks_per_node={tasks_per_node}", *overrides, f"hydra.run.dir={run_dir}")
    return result.stdout.split("submitted job ")[1].split()[0]


def in_queue(job_id: str) -> bool:
    out = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T"], capture_output=True, text=True).stdout
    return bool(out.strip())


def wait_finished(job_id: str, run_dir: Path, *, timeout: float) -> dict:
    """The summary once the job has left the queue; fails with the events log if it ended without one."""
    try:
        wait_until(lambda: not in_queue(job_id), timeout=timeout, what=f"job {job_id} to end", poll=1)
    finally:
        print("\n".join(json.dumps(e) for e in read_events(run_dir)))
    assert (run_dir / "summary.json").is_file(), f"job {job_id} ended without a summary"
    return read_summary(run_dir)


def preempt_everything() -> None:
    """A job in the high partition that wants every node: Slurm preempts what runs in debug."""
    subprocess.run(["sbatch", "-p", "high", "--nodes=4", "--exclusive", "--time=1", "--output=/dev/null",
                    "--wrap", "sleep 3"], check=True, capture_output=True)


def test_preemption_by_the_high_partition_at_a_random_step(tmp_path, reference):
    expected = reference(*INTERRUPTIBLE_RUN)
    name = f"preempted-{tmp_path.name}"
    command = [os.sys.executable, "-m", "jobs.train", *TWO_NODES, "cluster.tasks_per_node=1", *INTERRUPTIBLE_RUN,
               "cluster.wait=true", f"cluster.job_name={name}", f"hydra.run.dir={tmp_path}"]
    # The submitting side waits (cluster.wait=true): a requeue must not look like the end to it.
    waiting = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    at = random.Random().randint(300, 900)  # the preemption takes a few seconds to arrive: room to stop before 1500
    print(f"preempting at step {at}")
    wait_until(lambda: last_step(tmp_path) >= at, timeout=120, what=f"step {at}")
    job = subprocess.run(["squeue", "-h", "-n", name, "-o", "%i"], capture_output=True, text=True).stdout.strip()
    preempt_everything()
    out, err = waiting.communicate(timeout=300)
    summary = wait_finished(job, tmp_path, timeout=60)
    assert waiting.returncode == 0 and "done: 1500 steps" in out, err
    assert summary["param_digest"] == expected.result() and summary["param_digest"] in out
    signalled, requeued = events_named(tmp_path, "signalled"), events_named(tmp_path, "requeued")
    assert signalled[0]["cause"] == "preemption" and signalled[0]["signal"] == "USR2"
    assert requeued[0]["cause"] == "preemption"
    # nothing lost beyond the step in flight: the next run starts where the signal stopped this one
    assert summary["resumed_from_step"] == signalled[0]["step"] >= at
    assert events_named(tmp_path, "resumed")[0]["step"] == signalled[0]["step"]


def dry_run_layout(*overrides: str) -> dict[int, tuple[int, int, list[str], list[int]]]:
    """rank -> (node, local rank, layers, dp peers), as a dry run's rank layout table predicts them."""
    table = run_train(*overrides, "cluster.dry_run=true").stdout.split("dp peers\n")[1].split("\n\n")[0]
    layout = {}
    for row in table.strip().splitlines():
        rank, node, local_rank, _device, stage, layers, peers = row.split()
        first, _, last = layers.strip("()").partition("-")
        layout[int(rank)] = (int(node), int(local_rank), [str(n) for n in range(int(first), int(last or first) + 1)],
                             [int(peer) for peer in peers.split(",")])
    return layout


def test_hybrid_keeps_pipelines_inside_a_node_and_resumes_exactly_after_preemption(tmp_path, reference):
    expected = reference(*HYBRID, ranks=4)
    predicted = dry_run_layout(*TWO_NODES, "cluster.tasks_per_node=2", *HYBRID, f"hydra.run.dir={tmp_path / 'dry'}")
    assert not (tmp_path / "dry" / "logs").exists()  # a dry run submits nothing
    job = submit(tmp_path, *HYBRID, tasks_per_node=2)
    at = random.Random().randint(100, 500)
    print(f"preempting at step {at}")
    wait_until(lambda: last_step(tmp_path) >= at, timeout=180, what=f"step {at}")
    preempt_everything()
    summary = wait_finished(job, tmp_path, timeout=300)
    assert summary["param_digest"] == expected.result()
    signalled = events_named(tmp_path, "signalled")
    assert signalled[0]["cause"] == "preemption" and summary["resumed_from_step"] == signalled[0]["step"] >= at
    layouts = events_named(tmp_path, "layout")
    assert len(layouts) == 2  # as each run saw itself from inside; the requeued one may get other nodes
    for layout in layouts:
        host = {place["rank"]: place["host"] for place in layout["ranks"]}
        assert len(set(host.values())) == 2
        for place in layout["ranks"]:
            assert {host[peer] for peer in place["pp_ranks"]} == {place["host"]}, "a pipeline spans nodes"
            assert len({host[peer] for peer in place["dp_ranks"]}) == 2, "replicas share a node"
            assert place["layers"] == (["0", "1"] if place["rank"] % 2 == 0 else ["2", "3"])
        # what the dry run printed is what each run found: nodes numbered in the order of the job's ranks
        nodes = list(dict.fromkeys(host[rank] for rank in sorted(host)))
        assert {place["rank"]: (nodes.index(place["host"]), place["local_rank"], place["layers"], place["dp_ranks"])
                for place in layout["ranks"]} == predicted


def test_time_limit_is_crossed_by_requeues(tmp_path, reference):
    # A 1-minute limit with the warning 45 s before the end: Slurm's coarse timer sent it 10-33 s into the
    # job here, leaving ~4-27 s of training per allocation. The first run takes 40 ms more a step, so at most
    # ~700 of its 1500 steps fit, however fast the machine; the runs after it catch up at full speed. (The
    # faulty node's model is model=mlp built the same way: INTERRUPTIBLE_RUN's reference digest holds.) Slurm
    # may send the warning up to 60 s early, even before Python has started: cluster.slurm.task_runner catches
    # it, and that run stops after one step.
    expected = reference(*INTERRUPTIBLE_RUN)
    work = (*INTERRUPTIBLE_RUN, "model._target_=tests.scripts.faulty_node.make_model", "model.slurm_step_ms=40")
    job = submit(tmp_path, *work, "cluster.timeout_min=1", "cluster.signal_lead_s=45", "requeue.time_limit=20")
    summary = wait_finished(job, tmp_path, timeout=900)
    assert summary["param_digest"] == expected.result()
    requeued = events_named(tmp_path, "requeued")
    assert len(requeued) >= 1 and {e["cause"] for e in requeued} == {"time-limit"}
    resumed = [e["step"] for e in events_named(tmp_path, "resumed")]
    assert resumed == [e["step"] for e in requeued]  # each run began where the one before stopped


def test_sigkill_during_a_checkpoint_write_resumes_from_the_previous_one(tmp_path, reference):
    # A wide model makes each checkpoint ~50 MB, so a write lasts long enough to be caught.
    work = ("model.hidden=8192", "train.steps=120", "train.global_batch_size=64", "train.log_every_steps=5",
            "train.checkpoint_every_steps=10", "train.keep_checkpoints=10")
    expected = reference(*work)
    job = submit(tmp_path, *work)
    root = tmp_path / "checkpoints"

    def catch_a_write():
        if list(root.glob("step-*.partial")) and list(root.glob("step-*[0-9]")):
            for pid in rank_pids(tmp_path).values():
                os.kill(pid, signal.SIGKILL)
            return sorted(p.name for p in root.iterdir())
        return None

    on_disk = wait_until(catch_a_write, timeout=180, what="a checkpoint write", poll=0.005)
    print("killed with", on_disk)
    wait_until(lambda: not in_queue(job), timeout=60, what="the killed job to end")
    valid = sorted(p.name for p in root.iterdir() if not p.name.endswith(".partial"))
    assert any(name.endswith(".partial") for name in os.listdir(root)), "the kill came after the write"

    again = submit(tmp_path, *work)  # the next run: the same command
    summary = wait_finished(again, tmp_path, timeout=300)
    assert summary["resumed_from_step"] == int(valid[-1].split("-")[1])
    assert summary["param_digest"] == expected.result()
