"""Against the real local Slurm cluster (slurm/local-cluster): submission, multi-node groups, refusals."""

import os
import socket
import subprocess
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from cluster.environment import detect_environment
from cluster.runtime.process_group import process_group
from cluster.slurm.resources import SlurmResources
from cluster.slurm.sbatch import render_sbatch, submit
from tests.helpers import read_summary, run_train, squeue_ids

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("slurm_cluster")]
SHORT = ("train.steps=30", "train.global_batch_size=64", "train.log_every_steps=10", "train.checkpoint_every_steps=10")


def where_am_i() -> dict:
    """Run as every task of a job: its place, and an all-reduce of rank + 1 over the whole group."""
    env = detect_environment()
    with process_group(env, backend="gloo", timeout_s=60):
        value = torch.tensor([float(env.rank + 1)])
        dist.all_reduce(value)
        return {"rank": env.rank, "local_rank": env.local_rank, "host": socket.gethostname(),
                "node": os.environ["SLURMD_NODENAME"], "master": env.master_addr, "sum": value.item()}


def test_two_nodes_by_two_tasks_form_one_process_group(tmp_path):
    job = submit(where_am_i, resources=SlurmResources(nodes=2, tasks_per_node=2, timeout_min=5), folder=tmp_path)
    ranks = sorted(job.results(), key=lambda r: r["rank"])
    assert [r["rank"] for r in ranks] == [0, 1, 2, 3]
    assert len({(r["node"], r["local_rank"]) for r in ranks}) == 4
    assert len({r["node"] for r in ranks}) == 2
    assert all(r["sum"] == 1 + 2 + 3 + 4 for r in ranks)
    assert all(r["master"] == ranks[0]["node"] for r in ranks)
    # netns mode: every node has its own hostname; otherwise they all run on this machine under its own name
    netns = Path("/run/netns/cjnode1").exists()
    assert [r["host"] for r in ranks] == [r["node"] if netns else socket.gethostname() for r in ranks]


def test_training_on_two_nodes_matches_four_local_ranks(tmp_path):
    submitted = run_train("cluster=slurm", "cluster.nodes=2", "cluster.tasks_per_node=2", "cluster.wait=true",
                          *SHORT, f"hydra.run.dir={tmp_path / 'slurm'}")
    assert "submitted job" in submitted.stdout and "follow:  squeue -j" in submitted.stdout
    run_train("cluster.tasks_per_node=4", *SHORT, f"hydra.run.dir={tmp_path / 'local'}")
    on_slurm, local = read_summary(tmp_path / "slurm"), read_summary(tmp_path / "local")
    assert (on_slurm["launcher"], on_slurm["world_size"]) == ("slurm", 4)
    assert on_slurm["param_digest"] == local["param_digest"]


def test_submission_returns_before_the_job_ends(tmp_path):
    started = time.monotonic()
    result = run_train("cluster=slurm", "train.steps=3000", f"hydra.run.dir={tmp_path}")
    seconds = time.monotonic() - started
    job_id = result.stdout.split("submitted job ")[1].split()[0]
    try:
        assert job_id in squeue_ids(), "the prompt came back while the job still runs"
        print(f"time to prompt: {seconds:.1f} s")
        assert seconds < 15, f"{seconds:.1f} s to the prompt"  # ~2 s here; the job alone runs ~25 s
    finally:
        subprocess.run(["scancel", job_id], check=False)


@pytest.mark.parametrize("overrides, message", [
    (("cluster.partition=nosuch",), "partition 'nosuch' does not exist (partitions: debug, high)"),
    (("cluster.nodes=5", "train.global_batch_size=120"), "cluster.nodes=5 exceeds partition debug's 4 nodes"),
    (("cluster.timeout_min=100000",), "cluster.timeout_min=100000 exceeds partition debug's MaxTime of 1440 min"),
    # what the live cluster's nodes offer (sinfo): 2 CPUs each, no GPU
    (("cluster.tasks_per_node=2", "cluster.cpus_per_task=2"),
     "cluster.tasks_per_node x cluster.cpus_per_task = 4 CPUs per node, but only 0 of partition debug's nodes have "
     "that many (largest: 2)"),
    (("cluster.gpus_per_node=1",),
     "cluster.gpus_per_node=1, but only 0 of partition debug's nodes have that many GPUs (most: 0); pick a GPU "
     "partition with cluster.partition=NAME, or cluster.gpus_per_node=0"),
])
def test_impossible_jobs_are_refused_before_sbatch(tmp_path, overrides, message):
    before = squeue_ids()
    result = run_train("cluster=slurm", *overrides, f"hydra.run.dir={tmp_path}", check=False)
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr, result.stderr
    assert not squeue_ids() - before and not (tmp_path / "logs").exists()  # nothing new was queued


def test_unreachable_slurm_is_a_clear_error(tmp_path):
    env = dict(os.environ, SLURM_CONF=str(tmp_path / "missing.conf"))
    result = run_train("cluster=slurm", f"hydra.run.dir={tmp_path}", check=False, env=env)
    # scontrol either fails at once or keeps trying until our timeout: both say what to check
    assert result.returncode == 2 and "check `scontrol ping`" in result.stderr, result.stderr
    without = dict(os.environ, PATH=os.path.dirname(os.sys.executable))
    result = run_train("cluster=slurm", f"hydra.run.dir={tmp_path}", check=False, env=without)
    assert result.returncode == 2 and "Slurm is not installed here" in result.stderr, result.stderr


def test_hostile_job_name_is_only_a_name(tmp_path):
    canary = tmp_path / "canary"
    name = f"x; touch {canary}; $(touch {canary})"
    resources = SlurmResources(job_name=name, timeout_min=5)
    job = submit(socket.gethostname, resources=resources, folder=tmp_path / "logs")
    job.result()
    assert not canary.exists()
    # what a dry run prints is what was submitted, byte for byte
    assert job.paths.submission_file.read_text() == render_sbatch(resources, folder=tmp_path / "logs")
    for _ in range(30):  # slurmdbd records the job a moment after it ends
        recorded = subprocess.run(["sacct", "-n", "-X", "-P", "-j", job.job_id, "-o", "JobName"],
                                  capture_output=True, text=True).stdout.strip()
        if recorded == name:
            break
        time.sleep(0.5)
    assert recorded == name
