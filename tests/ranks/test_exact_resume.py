"""Exact resume, every strategy and every world size this machine runs (1-4 ranks): a run stopped at a random
step (printed; epochs of 5 steps, so mid-epoch and epoch ends both come up) and started again ends with the
parameter digest of an uninterrupted run. The model uses dropout and the data a random augmentation, so a
generator restored wrongly (or not at all) changes the digest."""

import random

import pytest
import torch

from cluster.rundir import read_events
from tests.helpers import final_model, read_summary
from tests.ranks.test_user_code import package, train  # noqa: F401  (package: a fixture)

STEPS = 12
# 256 samples, 48 a step: 5 steps an epoch; 48 splits over 1-4 replicas and into the pipelines' micro-batches.
RUN = (f"train.steps={STEPS}", "train.global_batch_size=48", "train.log_every_steps=4",
       "train.checkpoint_every_steps=4", "data.size=256", "model.dropout=0.1", "data.jitter=0.1")

CELLS = {
    "single-1": ("cluster=debug", "strategy=single"),
    "ddp-1": ("strategy=ddp", "cluster.tasks_per_node=1"),
    "ddp-2": ("strategy=ddp", "cluster.tasks_per_node=2"),
    "ddp-3": ("strategy=ddp", "cluster.tasks_per_node=3"),
    "ddp-4": ("strategy=ddp", "cluster.tasks_per_node=4"),
    "ddp-2-workers": ("strategy=ddp", "cluster.tasks_per_node=2", "train.num_workers=2"),
    "fsdp-1": ("strategy=fsdp", "cluster.tasks_per_node=1"),
    "fsdp-2": ("strategy=fsdp", "cluster.tasks_per_node=2"),
    "fsdp-3": ("strategy=fsdp", "cluster.tasks_per_node=3"),
    "fsdp-4": ("strategy=fsdp", "cluster.tasks_per_node=4"),
    "pipeline-gpipe-2": ("strategy=pipeline", "strategy.schedule=gpipe", "strategy.split_points=[blocks.2]"),
    "pipeline-1f1b-2": ("strategy=pipeline", "strategy.split_points=[blocks.2]"),
    "pipeline-1f1b-4": ("strategy=pipeline", "strategy.pp=4", "strategy.microbatches=4", "cluster.tasks_per_node=4",
                        "strategy.split_points=[blocks.1,blocks.2,blocks.3]"),
    "pipeline-interleaved-2": ("strategy=pipeline", "strategy.schedule=interleaved", "strategy.stages_per_rank=2",
                               "strategy.microbatches=4", "strategy.split_points=[blocks.1,blocks.2,blocks.3]"),
    "hybrid-ddp-4": ("strategy=hybrid", "cluster.tasks_per_node=4", "strategy.split_points=[blocks.2]"),
    "hybrid-fsdp-4": ("strategy=hybrid", "strategy.replicate=fsdp", "cluster.tasks_per_node=4",
                      "strategy.split_points=[blocks.2]"),
}


@pytest.mark.slow
@pytest.mark.parametrize("cell", list(CELLS))
def test_a_run_stopped_at_a_random_step_ends_as_an_uninterrupted_one(package, tmp_path, cell):  # noqa: F811
    stop = random.Random().randint(1, STEPS - 1)
    print(f"{cell}: stopped at step {stop}")
    run = (*RUN, *CELLS[cell])
    train(package, *run, f"hydra.run.dir={tmp_path / 'whole'}")
    train(package, *run, f"train.steps={stop}", f"hydra.run.dir={tmp_path / 'split'}")
    train(package, *run, f"hydra.run.dir={tmp_path / 'split'}")
    split, whole = read_summary(tmp_path / "split"), read_summary(tmp_path / "whole")
    assert split["resumed_from_step"] == stop
    assert split["param_digest"] == whole["param_digest"], f"{cell}, stopped at {stop}"


ACCUMULATED = {
    "ddp": ("strategy=ddp", "cluster.tasks_per_node=2", "train.micro_batch_size=6"),
    "fsdp": ("strategy=fsdp", "cluster.tasks_per_node=2", "train.micro_batch_size=8"),
    "hybrid": ("strategy=hybrid", "cluster.tasks_per_node=4", "strategy.split_points=[blocks.2]",
               "train.micro_batch_size=3"),
}


@pytest.mark.slow
@pytest.mark.parametrize("cell", list(ACCUMULATED))
def test_micro_batches_accumulate_to_the_step_without_them(package, tmp_path, cell):  # noqa: F811
    """train.micro_batch_size: several forward/backward passes a step, their gradients summed (synced once for
    ddp and fsdp); the parameters equal those of one pass on the whole batch, up to float rounding."""
    plain = (*RUN, "model.dropout=0.0", *[o for o in ACCUMULATED[cell] if "micro_batch_size" not in o])
    train(package, *plain, f"hydra.run.dir={tmp_path / 'one'}")
    train(package, *plain, ACCUMULATED[cell][-1], f"hydra.run.dir={tmp_path / 'micro'}")
    layout = [e for e in read_events(tmp_path / "micro") if e["event"] == "layout"][0]
    assert layout["accumulation"] > 1
    one, micro = final_model(tmp_path / "one"), final_model(tmp_path / "micro")
    for name in one:
        torch.testing.assert_close(micro[name], one[name], atol=1e-6, rtol=0, msg=name)
