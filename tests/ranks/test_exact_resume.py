"""Exact resume, every strategy and every world size this machine runs (1-4 ranks): a run resumed at a random
step (printed; epochs of 5 steps, so mid-epoch and epoch ends both come up) ends with the parameter digest of an
uninterrupted run. The model uses dropout and the data a random augmentation, so a generator restored wrongly
(or not at all) changes the digest; the runs are validated every 5 steps (an evaluation moves no generator of
the training). Also: micro-batch accumulation, and a resume on other numbers of ranks, each of whose
evaluations reads every held-out sample once."""

import collections
import functools
import random
import shutil
from collections.abc import Collection
from pathlib import Path

import pytest
import torch

from cluster.rundir import read_events, read_jsonl
from jobs.data import held_out
from tests.helpers import REPO, final_model, read_summary, run_train
from tests.ranks.test_user_code import package, train  # noqa: F401  (package: a fixture)

STEPS = 12
# 297 samples, 41 held out for validation: 256 trained on, 48 a step, 5 steps an epoch; 48 splits over 1-4
# replicas and into the pipelines' micro-batches, 41 unevenly.
SAMPLES, VAL_FRACTION = 297, 0.138
RUN = (f"train.steps={STEPS}", "train.global_batch_size=48", "train.log_every_steps=4",
       "train.checkpoint_every_steps=4", f"data.size={SAMPLES}", "model.dropout=0.1", "data.jitter=0.1",
       f"data.val_fraction={VAL_FRACTION}", "train.eval_every_steps=5")

# Each strategy and schedule at least once, each world size 1-4 at least once, within CI's time. Also passed here,
# left out for that time: ddp and fsdp on 1 and 2 ranks, pipeline 1f1b on 2.
CELLS = {
    "single-1": ("cluster=debug", "strategy=single"),
    "ddp-3": ("strategy=ddp", "cluster.tasks_per_node=3"),
    "ddp-4": ("strategy=ddp", "cluster.tasks_per_node=4"),
    "ddp-2-workers": ("strategy=ddp", "cluster.tasks_per_node=2", "train.num_workers=2"),
    "fsdp-3": ("strategy=fsdp", "cluster.tasks_per_node=3"),
    "fsdp-4": ("strategy=fsdp", "cluster.tasks_per_node=4"),
    "pipeline-gpipe-2": ("strategy=pipeline", "strategy.schedule=gpipe", "strategy.split_points=[blocks.2]"),
    "pipeline-1f1b-4": ("strategy=pipeline", "strategy.pp=4", "strategy.microbatches=4", "cluster.tasks_per_node=4",
                        "strategy.split_points=[blocks.1,blocks.2,blocks.3]"),
    "pipeline-interleaved-2": ("strategy=pipeline", "strategy.schedule=interleaved", "strategy.stages_per_rank=2",
                               "strategy.microbatches=4", "strategy.split_points=[blocks.1,blocks.2,blocks.3]"),
    "hybrid-ddp-4": ("strategy=hybrid", "cluster.tasks_per_node=4", "strategy.split_points=[blocks.2]"),
    "hybrid-fsdp-4": ("strategy=hybrid", "strategy.replicate=fsdp", "cluster.tasks_per_node=4",
                      "strategy.split_points=[blocks.2]"),
    # Mixed precision and clipping on: FSDP2's bf16 policy, and fp16's loss scaler (its scale in the checkpoint);
    # activation checkpointing and compiled blocks (aot_eager: dynamo's graphs, without inductor's C++ compiles).
    "fsdp-2-bf16-clipped-checkpointed-compiled": (
        "strategy=fsdp", "cluster.tasks_per_node=2", "train.precision=bf16", "train.grad_clip_norm=0.5",
        "strategy.activation_checkpointing=true", "train.compile=true", "train.compile_backend=aot_eager"),
    "pipeline-1f1b-2-fp16-clipped": ("strategy=pipeline", "strategy.split_points=[blocks.2]", "train.precision=fp16",
                                     "train.grad_clip_norm=0.5"),
}


# The language model on real text (this README's bytes, windows of 16: every stop is mid-epoch), cut into a
# pipeline of two stages between its blocks (the head's weight untied from the embedding's), in bf16, with
# dropout and validation. (Its replicas, strategy=hybrid, are the transformer's: cells hybrid-*-4.)
GPT = ("model=gpt", "data=text", f"data.path={REPO / 'README.md'}", "data.seq_len=16", "model.dim=32",
       "model.dropout=0.1", f"train.steps={STEPS}", "train.global_batch_size=32", "train.log_every_steps=4",
       "data.val_fraction=0.02", "train.eval_every_steps=5")
TEXT_CELLS = {"gpt-pipeline-2-bf16": ("strategy=pipeline", "strategy.microbatches=2", "train.precision=bf16")}


@pytest.mark.slow
@pytest.mark.parametrize("cell", [*CELLS, *TEXT_CELLS])
def test_a_run_stopped_at_a_random_step_ends_as_an_uninterrupted_one(package, tmp_path, cell):  # noqa: F811
    """The uninterrupted run saves every ``stop`` steps; the checkpoint of the stop step, alone in a new run
    directory, is what a run stopped there leaves (the same save at a step boundary); the run goes on from it."""
    stop = random.Random().randint(1, STEPS - 1)
    print(f"{cell}: stopped at step {stop}")
    if cell in TEXT_CELLS:
        run, runner = (*GPT, *TEXT_CELLS[cell]), run_train
    else:
        run, runner = (*RUN, *CELLS[cell]), functools.partial(train, package)
    run = (*run, f"train.checkpoint_every_steps={stop}", f"train.keep_checkpoints={STEPS}")
    runner(*run, f"hydra.run.dir={tmp_path / 'whole'}")
    saved = tmp_path / "whole" / "checkpoints" / f"step-{stop:06d}"
    assert saved.is_dir(), sorted(p.name for p in saved.parent.iterdir())
    shutil.copytree(saved, tmp_path / "split" / "checkpoints" / saved.name)
    runner(*run, f"hydra.run.dir={tmp_path / 'split'}")
    split, whole = read_summary(tmp_path / "split"), read_summary(tmp_path / "whole")
    assert split["resumed_from_step"] == stop
    assert split["param_digest"] == whole["param_digest"], f"{cell}, stopped at {stop}"


@pytest.mark.slow
def test_evaluating_after_every_step_changes_nothing_in_the_training(package, tmp_path):  # noqa: F811
    """An evaluation reads augmented samples with the model in eval mode, and puts every generator back: a run
    evaluated after each step ends as one evaluated at its end only (train.eval_every_steps is no fingerprint key)."""
    for every in (0, 1):
        train(package, *RUN, "cluster=debug", "strategy=single", f"train.eval_every_steps={every}",
              f"hydra.run.dir={tmp_path / str(every)}")
    assert read_summary(tmp_path / "1")["param_digest"] == read_summary(tmp_path / "0")["param_digest"]
    evaluated = [r["step"] for r in read_jsonl(tmp_path / "1" / "metrics.jsonl") if "val_loss" in r]
    assert evaluated == list(range(1, STEPS + 1))


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


VALIDATION = held_out(SAMPLES, VAL_FRACTION)[1]  # the indices data.val_fraction holds out, in order


def steps_read(log: Path, *, segments: list[tuple[int, int]], global_batch: int,
               validation: Collection[int] = ()) -> list[list[int]]:
    """The samples each step of a run read (sorted), from the files of ``tests/scripts/logged_data.py``:
    ``segments`` are (world size, steps) of its starts, in order, each a different world size; the reads of the
    ``validation`` samples (held out) are not the steps'."""
    steps: list[list[int]] = []
    for world, count in segments:
        share = global_batch // world
        reads = {}
        for file in log.glob(f"{world}-*.txt"):
            rank = int(file.name.split("-")[1])
            lines = [int(line) for line in file.read_text().split() if int(line) not in validation]
            # before training: the trainer's look at item 0, the loader's at items 0-2 (does it draw at random?)
            assert len(lines) == count * share + 4, (file, len(lines))
            reads[rank] = lines[4:]
        assert sorted(reads) == list(range(world))
        for step in range(count):
            steps.append(sorted(i for rank in reads for i in reads[rank][step * share:(step + 1) * share]))
    return steps


@pytest.mark.slow
def test_a_run_resumed_on_four_ranks_then_on_one_reads_the_same_samples_and_ends_the_same(package, tmp_path):  # noqa: F811
    """Elastic: 2 ranks to step 5, 4 ranks to step 8, 1 rank to step 12 (train.allow_changes=[layout.world_size]):
    each step reads the samples the uninterrupted 2-rank run read, with more accumulation on fewer ranks, and the
    parameters end within 1e-5 of it; the changes are in events.jsonl."""
    (tmp_path / "log-whole").mkdir()
    (tmp_path / "log-elastic").mkdir()
    run = (*RUN, "model.dropout=0.0", "data._target_=tests.scripts.logged_data.make_dataset", "~data.jitter",
           "train.micro_batch_size=12", "strategy=ddp")
    train(package, *run, "cluster.tasks_per_node=2", f"data.log={tmp_path / 'log-whole'}",
          f"hydra.run.dir={tmp_path / 'whole'}")
    elastic = (*run, f"data.log={tmp_path / 'log-elastic'}", "train.allow_changes=[layout.world_size]",
               f"hydra.run.dir={tmp_path / 'elastic'}")
    for ranks, steps in ((2, 5), (4, 8), (1, STEPS)):
        train(package, *elastic, f"cluster.tasks_per_node={ranks}", f"train.steps={steps}")
    whole = steps_read(tmp_path / "log-whole", segments=[(2, STEPS)], global_batch=48, validation=VALIDATION)
    # Every evaluation (at steps 5, 10 and the end of each run) read each held-out sample once, on any number of ranks
    for log, world, evaluations in (("log-whole", 2, 3), ("log-elastic", 2, 1), ("log-elastic", 4, 1),
                                    ("log-elastic", 1, 2)):
        assert validation_reads(tmp_path / log, world) == {index: evaluations for index in VALIDATION}, (log, world)
    assert steps_read(tmp_path / "log-elastic", segments=[(2, 5), (4, 3), (1, 4)], global_batch=48,
                      validation=VALIDATION) == whole
    assert len({i for step in whole[:5] for i in step}) == 5 * 48  # an epoch reads no sample twice
    one, elastic_model = final_model(tmp_path / "whole"), final_model(tmp_path / "elastic")
    for name in one:
        torch.testing.assert_close(elastic_model[name], one[name], atol=1e-5, rtol=0, msg=name)
    events = read_events(tmp_path / "elastic")
    resized = [(e["step"], e["was"], e["world_size"]) for e in events if e["event"] == "resized"]
    assert resized == [(5, 2, 4), (8, 4, 1)]
    layouts = [e["accumulation"] for e in events if e["event"] == "layout"]
    assert layouts == [2, 1, 4]


def validation_reads(log: Path, world: int) -> dict[int, int]:
    """How often the ranks of a run on ``world`` ranks read each held-out sample in evaluations (less each rank's
    look at the first before training, and the loader's at the first three: does it draw at random?)."""
    counts = collections.Counter(index for file in log.glob(f"{world}-*.txt")
                                 for index in map(int, file.read_text().split()) if index in VALIDATION)
    for index in (VALIDATION[0], *VALIDATION[:3]):
        counts[index] -= world
    return dict(counts)
