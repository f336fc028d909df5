"""Your own package trained by config on the real local Slurm cluster (2 nodes x 2 tasks), preempted at a
random step: it ends with the parameters of an uninterrupted run. The ranks find the package as the login
node did (PYTHONPATH, which sbatch passes on)."""

import os
import random
import subprocess
import sys

import pytest

from tests.helpers import REPO, events_named, in_background, last_step, read_summary, squeue_ids, wait_until
from tests.ranks.test_user_code import package  # noqa: F401  (the fixture)
from tests.slurm.test_requeue_slurm import preempt_everything, wait_finished

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("slurm_cluster")]
RUN = ("model.dropout=0.1", "train.steps=1200", "train.global_batch_size=64", "train.log_every_steps=20",
       "train.checkpoint_every_steps=500")


def user_train(package_dir, *overrides: str) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", "jobs.train", "--config-dir", str(package_dir / "myconf"),
                           "model=resmlp", "data=shapes", "loss._target_=mylab.losses.smooth_ce", *RUN, *overrides],
                          cwd=REPO, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": str(package_dir)})
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return done


def test_a_user_package_preempted_on_two_nodes_ends_as_an_uninterrupted_run(package, tmp_path):  # noqa: F811
    uninterrupted = tmp_path / "reference"
    reference = in_background(user_train, package, "cluster.tasks_per_node=4", f"hydra.run.dir={uninterrupted}")
    run_dir = tmp_path / "slurm"
    submitted = user_train(package, "cluster=slurm", "cluster.nodes=2", "cluster.tasks_per_node=2",
                           "cluster.timeout_min=10", f"hydra.run.dir={run_dir}")
    job = submitted.stdout.split("submitted job ")[1].split()[0]
    at = random.Random().randint(100, 600)  # the preemption took ~150 steps to arrive here
    print(f"preempting at step {at}")
    wait_until(lambda: last_step(run_dir) >= at, timeout=180, what=f"step {at}")
    preempt_everything()
    summary = wait_finished(job, run_dir, timeout=300)
    reference.result()
    assert summary["param_digest"] == read_summary(uninterrupted)["param_digest"]
    signalled = events_named(run_dir, "signalled")
    assert signalled[0]["cause"] == "preemption" and summary["resumed_from_step"] == signalled[0]["step"] >= at
    assert {place["host"] for place in events_named(run_dir, "layout")[0]["ranks"]} == {"node1", "node2"} or len(
        {place["host"] for place in events_named(run_dir, "layout")[0]["ranks"]}) == 2


@pytest.mark.parametrize("override, message", [
    ("model._target_=mylab.nets.UNet", "error: model._target_=mylab.nets.UNet: mylab.nets has no callable 'UNet'"),
    ("model.widht=3", "error: model.widht: mylab.nets.ResMLP does not take it"),
])
def test_a_bad_target_is_refused_before_submitting(package, tmp_path, override, message):  # noqa: F811
    before = squeue_ids()
    done = subprocess.run([sys.executable, "-m", "jobs.train", "--config-dir", str(package / "myconf"),
                           "model=resmlp", "data=shapes", "cluster=slurm", override, f"hydra.run.dir={tmp_path / 'r'}"],
                          cwd=REPO, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(package)})
    assert done.returncode == 2 and done.stderr.startswith(message) and len(done.stderr.splitlines()) == 1, done.stderr
    assert not squeue_ids() - before and not (tmp_path / "r").exists()
