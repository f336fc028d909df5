"""The README's language model: ``model=gpt data=text`` on this repository's README, on 2 CPU ranks in bf16. Its
whole default run (400 steps: loss 5.55 -> 2.59, val_loss 2.57 here) takes a minute and a quarter on 2 cores;
the first 60 steps show the loss falling from ln 256 (a byte guessed at random) for a sixth of it. The exact
resume of the same model cut into a pipeline is in ``test_exact_resume.py``."""

import math

import pytest

from cluster.rundir import read_jsonl
from tests.helpers import read_summary, run_train

pytestmark = pytest.mark.slow


def test_a_gpt_learns_the_readme_in_bf16_and_reports_its_perplexity(tmp_path):
    run_train("model=gpt", "data=text", "data.path=README.md", "train.precision=bf16", "data.val_fraction=0.05",
              "train.steps=60", "train.log_every_steps=10", f"hydra.run.dir={tmp_path}")
    losses = [record["loss"] for record in read_jsonl(tmp_path / "metrics.jsonl")]
    assert abs(losses[0] - math.log(256)) < 0.1, losses  # step 1: every byte as likely
    assert losses[-1] < 3.8, losses  # the bytes of English text are far from random after 60 steps (3.37 here)
    summary = read_summary(tmp_path)
    assert summary["precision"] == "bf16" and summary["val_loss"] < 3.8
    assert summary["val_perplexity"] == pytest.approx(math.exp(summary["val_loss"]))
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    board = EventAccumulator(str(tmp_path / "tensorboard"))
    board.Reload()
    assert {"train/loss", "val/loss", "val/accuracy", "val/perplexity"} <= set(board.Tags()["scalars"])
    assert board.Scalars("val/loss")[-1].value == pytest.approx(summary["val_loss"], rel=1e-6)
