"""Mixed precision and gradient clipping (``train.precision``, ``train.grad_clip_norm``) on gloo ranks: bf16 and
fp16 end near fp32, fp16's loss scaler skips an overflowed step on every rank at once, and the norm clipped by is
the whole model's, as one process measures it."""

import json
import shutil

import pytest

from tests.helpers import read_summary, run_train
from tests.ranks.test_user_code import package, train  # noqa: F401  (package: a fixture)

MLP = ("model=mlp", "train.steps=60", "train.global_batch_size=64", "train.log_every_steps=10",
       "train.checkpoint_every_steps=0")
# The language model on this repository's README (bytes), small: 40 steps of 32 windows of 32 bytes.
GPT = ("model=gpt", "data=text", "data.path=README.md", "data.seq_len=32", "model.dim=32", "train.steps=40",
       "train.global_batch_size=32", "train.log_every_steps=10", "train.checkpoint_every_steps=0")
# The seed article's MLP is not an nn.Sequential: its pipeline is cut where fc2 begins; the gpt's between blocks.
STRATEGIES = {
    ("mlp", "ddp"): ("strategy=ddp",),
    ("mlp", "fsdp"): ("strategy=fsdp",),
    ("mlp", "pipeline"): ("strategy=pipeline", "strategy.split_points=[fc2]", "strategy.microbatches=2"),
    ("gpt", "ddp"): ("strategy=ddp",),
    ("gpt", "fsdp"): ("strategy=fsdp",),
    ("gpt", "pipeline"): ("strategy=pipeline", "strategy.microbatches=2"),
}
RUNS = {"mlp": MLP, "gpt": GPT}
# The final loss at a lower precision, against fp32's on the same data (the README states it).
TOLERANCE = 0.02


def records(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def fp32(tmp_path_factory):
    """The fp32 run of each model that every strategy's bf16 and fp16 runs are held to (in fp32 the strategies end
    as one process does, within 1e-5 of the loss: tests/ranks/test_parallel.py), once for the module."""
    done = {}

    def run(model: str):
        if model not in done:
            done[model] = tmp_path_factory.mktemp(f"fp32-{model}")
            run_train(*RUNS[model], *STRATEGIES[model, "ddp"], f"hydra.run.dir={done[model]}")
        return done[model]

    return run


@pytest.mark.slow
@pytest.mark.parametrize("model, strategy", list(STRATEGIES), ids=[f"{m}-{s}" for m, s in STRATEGIES])
def test_bf16_and_fp16_end_within_the_tolerance_of_fp32(tmp_path, fp32, model, strategy):
    baseline = fp32(model)
    losses = {"fp32": read_summary(baseline)["final_loss"]}
    for precision in ("bf16", "fp16"):
        run_dir = tmp_path / precision
        run_train(*RUNS[model], *STRATEGIES[model, strategy], f"train.precision={precision}",
                  f"hydra.run.dir={run_dir}")
        summary = read_summary(run_dir)
        assert summary["precision"] == precision
        losses[precision] = summary["final_loss"]
    print(model, strategy, losses)
    assert losses["fp32"] < records(baseline)[0]["loss"] - 0.5  # it learned: the comparison means something
    assert abs(losses["bf16"] - losses["fp32"]) <= TOLERANCE and abs(losses["fp16"] - losses["fp32"]) <= TOLERANCE
    assert losses["bf16"] != losses["fp32"]  # the lower precision was used
    assert all("loss_scale" in record for record in records(tmp_path / "fp16"))


@pytest.mark.slow
def test_an_overflow_on_one_stage_skips_the_step_on_every_rank(tmp_path):
    """Stage 0's gradients overflow at step 5: the scaler halves its scale, and every rank skips that step, the
    stage whose gradients were finite too; so the run ends as one whose gradients overflowed on both stages."""
    run = ("model._target_=tests.scripts.overflow.make_model", "model.at=5", "model.microbatches=2",
           "strategy=pipeline", "strategy.microbatches=2", "train.precision=fp16", "train.steps=12",
           "train.global_batch_size=32", "train.log_every_steps=1", "train.checkpoint_every_steps=0")
    run_train(*run, f"hydra.run.dir={tmp_path / 'one'}")
    run_train(*run, "model.everywhere=true", f"hydra.run.dir={tmp_path / 'both'}")
    scales = [record["loss_scale"] for record in records(tmp_path / "one")]
    assert scales[3] == 2 * scales[4] and len(set(scales[:4])) == 1 and len(set(scales[4:])) == 1, scales
    one, both = read_summary(tmp_path / "one"), read_summary(tmp_path / "both")
    assert one["steps"] == 12 and one["final_loss"] == one["final_loss"]  # finished, and not NaN
    assert one["param_digest"] == both["param_digest"]
    assert records(tmp_path / "one")[4]["grad_norm"] == float("inf")


CLIPPED = ("model.dropout=0.0", "data.jitter=0.0", "train.steps=8", "train.global_batch_size=48",
           "train.log_every_steps=1", "train.checkpoint_every_steps=0", "train.grad_clip_norm=0.5")


@pytest.fixture(scope="module")
def clipped_alone(package, tmp_path_factory):  # noqa: F811
    """One process clipping the same model on the same batches, once for the module."""
    run_dir = tmp_path_factory.mktemp("alone")
    train(package, *CLIPPED, "cluster=debug", "strategy=single", f"hydra.run.dir={run_dir}")
    return run_dir


@pytest.mark.slow
@pytest.mark.parametrize("strategy, ranks", [
    (("strategy=fsdp",), 2),
    (("strategy=pipeline", "strategy.split_points=[blocks.2]"), 2),
    (("strategy=hybrid", "strategy.replicate=fsdp", "strategy.split_points=[blocks.2]"), 4),
], ids=["fsdp", "pipeline", "hybrid-fsdp"])
def test_the_clipped_norm_is_the_whole_models_as_one_process_measures_it(package, clipped_alone, tmp_path, strategy,  # noqa: F811
                                                                        ranks):
    train(package, *CLIPPED, *strategy, f"cluster.tasks_per_node={ranks}", f"hydra.run.dir={tmp_path / 'p'}")
    single = [record["grad_norm"] for record in records(clipped_alone)]
    parallel = [record["grad_norm"] for record in records(tmp_path / "p")]
    assert min(single) > 0.5  # clipped at every step: a wrong norm would change every step after it
    assert parallel == pytest.approx(single, rel=1e-5)


@pytest.mark.slow
def test_the_loss_scale_is_resumed_with_the_rest(tmp_path):
    """Halved by an overflow before step 6, the scale is in the step-6 checkpoint: a run resumed from it goes on with
    the halved scale, and ends as the uninterrupted run."""
    run = ("model._target_=tests.scripts.overflow.make_model", "model.at=3", f"model.once_file={tmp_path / 'once'}",
           "strategy=ddp", "train.precision=fp16", "train.steps=10", "train.global_batch_size=32",
           "train.log_every_steps=1", "train.checkpoint_every_steps=6")
    run_train(*run, f"hydra.run.dir={tmp_path / 'whole'}")
    saved = tmp_path / "whole" / "checkpoints" / "step-000006"
    shutil.copytree(saved, tmp_path / "split" / "checkpoints" / saved.name)
    run_train(*run, f"hydra.run.dir={tmp_path / 'split'}")
    whole, split = records(tmp_path / "whole"), records(tmp_path / "split")
    # halved by the overflow (at step 2 or 3: DDP's bucket layout runs one backward pass before the first step)
    assert whole[0]["loss_scale"] == 2 * whole[5]["loss_scale"] == 2 * whole[-1]["loss_scale"]
    assert [r["loss_scale"] for r in split if r["step"] > 6] == [r["loss_scale"] for r in whole if r["step"] > 6]
    assert read_summary(tmp_path / "split")["param_digest"] == read_summary(tmp_path / "whole")["param_digest"]
