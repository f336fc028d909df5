"""An elastic job (cluster.min_nodes) on the real local Slurm cluster: started on 2 nodes, preempted by a job
that takes 3 of the 4 nodes, it comes back on the 1 node left and ends as the uninterrupted 2-rank run does:
the same samples at every step, parameters within 1e-5, the change in events.jsonl and in status."""

import json
import random
import subprocess

import pytest
import torch

from tests.helpers import cli, events_named, final_model, in_background, last_step, squeue_ids, wait_until
from tests.ranks.test_exact_resume import steps_read
from tests.ranks.test_user_code import package, train  # noqa: F401  (package: a fixture)
from tests.slurm.test_requeue_slurm import wait_finished

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("slurm_cluster")]
# Float rounding (sums over 2 ranks vs. 4 micro-batches on 1) drifts the parameters apart step after step: ~1e-5
# after 1100 steps here. A slow read (0.8 ms an item: ~20 ms a step on 2 ranks) lets the preemption land within a
# few hundred steps, so the comparison holds at 1e-5.
STEPS = 400
RUN = (f"train.steps={STEPS}", "train.global_batch_size=48", "train.log_every_steps=10",
       "train.checkpoint_every_steps=100", "train.micro_batch_size=12", "model.dropout=0.0", "strategy=ddp",
       "data._target_=tests.scripts.logged_data.make_dataset", "~data.size", "data.delay_ms=0.8")


def test_an_elastic_job_preempted_by_a_three_node_job_comes_back_on_one_node(package, tmp_path):  # noqa: F811
    for log in ("log-whole", "log-slurm"):
        (tmp_path / log).mkdir()
    whole_run = in_background(train, package, *RUN, "cluster.tasks_per_node=2", f"data.log={tmp_path / 'log-whole'}",
                              f"hydra.run.dir={tmp_path / 'whole'}")
    run_dir = tmp_path / "slurm"
    # Slurm starts an elastic job on what is free: with earlier tests' jobs still ending, it would get 1 node now
    wait_until(lambda: not squeue_ids(), timeout=180, what="an empty queue")
    submitted = train(package, *RUN, "cluster=slurm", "cluster.nodes=2", "cluster.min_nodes=1",
                      "cluster.tasks_per_node=1", "cluster.timeout_min=10", f"data.log={tmp_path / 'log-slurm'}",
                      f"hydra.run.dir={run_dir}")
    assert "1-2 node(s) x 1 task(s)" in submitted.stdout
    job = submitted.stdout.split("submitted job ")[1].split()[0]
    at = random.Random().randint(50, 150)
    print(f"preempting at step {at}")
    wait_until(lambda: last_step(run_dir) >= at, timeout=180, what=f"step {at}")
    # 3 of the 4 nodes, for long enough that the requeued job finds only one free
    subprocess.run(["sbatch", "-p", "high", "--nodes=3", "--exclusive", "--time=2", "--output=/dev/null",
                    "--wrap", "sleep 60"], check=True, capture_output=True)
    summary = wait_finished(job, run_dir, timeout=300)
    signalled = events_named(run_dir, "signalled")
    stop = signalled[0]["step"]
    assert signalled[0]["cause"] == "preemption" and stop >= at
    assert [e["world_size"] for e in events_named(run_dir, "started")] == [2, 1]
    assert [(e["step"], e["was"], e["world_size"]) for e in events_named(run_dir, "resized")] == [(stop, 2, 1)]
    assert [e["accumulation"] for e in events_named(run_dir, "layout")] == [2, 4]  # 48 = 2 x 2 x 12 = 1 x 4 x 12
    whole_run.result()
    whole = steps_read(tmp_path / "log-whole", segments=[(2, STEPS)], global_batch=48)
    assert steps_read(tmp_path / "log-slurm", segments=[(2, stop), (1, STEPS - stop)], global_batch=48) == whole
    one, elastic = final_model(tmp_path / "whole"), final_model(run_dir)
    for name in one:
        torch.testing.assert_close(elastic[name], one[name], atol=1e-5, rtol=0, msg=name)
    assert summary["world_size"] == 1
    status = cli("status", str(run_dir), "--json")
    assert json.loads(status.stdout)["members"][0]["ranks"] == [2, 1], status.stdout + status.stderr
