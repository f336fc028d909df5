"""Multi-process CPU runs of the real entry point, asserting numbers (gloo, 2 ranks)."""

import json
import signal
import subprocess
import sys
import time

import pytest
import torch

from cluster.rundir import read_events
from tests.helpers import REPO, final_model, read_summary, run_train

pytestmark = pytest.mark.slow
SHORT = ("train.steps=20", "train.global_batch_size=64", "train.log_every_steps=5", "train.checkpoint_every_steps=10")


def test_main_job_learns_and_writes_its_summary(tmp_path):
    result = run_train(f"hydra.run.dir={tmp_path}")
    summary = read_summary(tmp_path)
    assert {"final_loss", "steps", "samples_per_s", "param_digest", "run_dir"} <= set(summary)
    assert summary["steps"] == 400 and summary["world_size"] == 2 and summary["run_dir"] == str(tmp_path)
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert records[0]["step"] == 1 and records[0]["loss"] > 2.0  # log(10) = 2.30 at the start
    assert all(a["time"] <= b["time"] for a, b in zip(records, records[1:]))
    assert summary["final_loss"] < 0.2 * records[0]["loss"]
    assert summary["param_digest"] in result.stdout and f"run dir: {tmp_path}" in result.stdout
    assert list((tmp_path / "tensorboard").iterdir()), "tensorboard is installed, so event files are expected"


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_ranks_match_one_process_on_the_whole_batch(tmp_path, strategy):
    run_train(*SHORT, f"strategy={strategy}", "cluster.tasks_per_node=2", f"hydra.run.dir={tmp_path / strategy}")
    run_train(*SHORT, "cluster=debug", f"hydra.run.dir={tmp_path / 'single'}")
    two, single = final_model(tmp_path / strategy), final_model(tmp_path / "single")
    assert two.keys() == single.keys()
    for name in two:
        torch.testing.assert_close(two[name], single[name], atol=1e-6, rtol=0, msg=name)
    initial = build_initial_mlp()
    assert not torch.allclose(two["fc1.weight"], initial["fc1.weight"], atol=1e-3), "the model did train"


def test_fsdp_resumes_exactly_from_its_sharded_checkpoint(tmp_path):
    fsdp = ("strategy=fsdp", "model=transformer", "model.depth=2", "optim=adamw", "data.image_shape=[1,8,8]")
    run_train(*SHORT, *fsdp, f"hydra.run.dir={tmp_path / 'whole'}")
    run_train(*SHORT, *fsdp, "train.steps=10", f"hydra.run.dir={tmp_path / 'split'}")
    resumed = run_train(*SHORT, *fsdp, f"hydra.run.dir={tmp_path / 'split'}")
    assert read_summary(tmp_path / "split")["resumed_from_step"] == 10
    assert read_summary(tmp_path / "split")["param_digest"] == read_summary(tmp_path / "whole")["param_digest"]
    assert read_summary(tmp_path / "whole")["param_digest"] in resumed.stdout
    shards = sorted(p.name for p in (tmp_path / "whole" / "checkpoints" / "step-000020").iterdir())
    assert shards == [".metadata", "COMPLETE", "__0_0.distcp", "__1_0.distcp"]


def build_initial_mlp() -> dict[str, torch.Tensor]:
    from jobs.models import mlp

    torch.manual_seed(0)
    return mlp((1, 28, 28), 10).state_dict()


def test_sigkilled_run_resumes_to_the_same_digest(tmp_path):
    args = ("train.steps=600", "train.checkpoint_every_steps=100")
    run_train(*args, f"hydra.run.dir={tmp_path / 'whole'}")
    reference = read_summary(tmp_path / "whole")

    killed_dir = tmp_path / "killed"
    command = [sys.executable, "-m", "jobs.train", *args, f"hydra.run.dir={killed_dir}"]
    launcher = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    checkpoint = killed_dir / "checkpoints" / "step-000200" / "COMPLETE"
    deadline = time.monotonic() + 120
    while not checkpoint.exists():
        assert launcher.poll() is None and time.monotonic() < deadline, "the run ended before it could be killed"
        time.sleep(0.02)
    launcher.send_signal(signal.SIGKILL)
    launcher.wait()
    time.sleep(2)  # the ranks notice their launcher is gone within half a second
    assert not (killed_dir / "summary.json").exists()
    frozen = sorted(p.name for p in (killed_dir / "checkpoints").iterdir())
    time.sleep(1)
    assert sorted(p.name for p in (killed_dir / "checkpoints").iterdir()) == frozen, "orphan ranks kept training"
    assert "step-000600" not in frozen

    run_train(*args, f"hydra.run.dir={killed_dir}")
    resumed = read_summary(killed_dir)
    assert resumed["resumed_from_step"] >= 200
    assert resumed["param_digest"] == reference["param_digest"]
    steps = [json.loads(line)["step"] for line in (killed_dir / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps)), "records of the lost steps were dropped, not duplicated"


def test_torchrun_inline_trains_like_the_local_launcher(tmp_path, cpu_only_env):
    run_train(*SHORT, f"hydra.run.dir={tmp_path / 'local'}")
    subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "jobs.train",
         "cluster=inline", *SHORT, f"hydra.run.dir={tmp_path / 'torchrun'}"],
        cwd=REPO, env=cpu_only_env, check=True, capture_output=True, timeout=300,
    )
    local, torchrun = read_summary(tmp_path / "local"), read_summary(tmp_path / "torchrun")
    assert torchrun["launcher"] == "torchrun" and torchrun["world_size"] == 2
    assert torchrun["param_digest"] == local["param_digest"]


def test_a_finished_run_started_again_changes_nothing(tmp_path):
    run_train(*SHORT, f"hydra.run.dir={tmp_path}")
    first = read_summary(tmp_path)
    run_train(*SHORT, f"hydra.run.dir={tmp_path}")
    again = read_summary(tmp_path)
    assert again["resumed_from_step"] == 20 and again["param_digest"] == first["param_digest"]


def test_checkpoints_come_by_time_and_the_default_writes_only_the_last(tmp_path):
    """train.checkpoint_every_min: saves every ~0.3 s here, all ranks at one step (a save is collective: ranks that
    disagreed would not finish it); the default (30 min, no step cadence) saves once, at the end."""
    run_train("train.steps=600", "train.checkpoint_every_min=0.005", "train.keep_checkpoints=100",
              f"hydra.run.dir={tmp_path / 'timed'}")
    timed = [e["step"] for e in read_events(tmp_path / "timed") if e["event"] == "checkpointed"]
    assert len(timed) >= 3 and timed[-1] == 600 and timed == sorted(set(timed)), timed
    run_train("train.steps=600", f"hydra.run.dir={tmp_path / 'default'}")
    assert [e["step"] for e in read_events(tmp_path / "default") if e["event"] == "checkpointed"] == [600]
    assert read_summary(tmp_path / "default")["param_digest"] == read_summary(tmp_path / "timed")["param_digest"]
