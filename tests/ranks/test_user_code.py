"""Your own model, data and loss by config (``_target_``): an outside package, copied into a temporary folder
(not importable from the repository), trained with every strategy and matching one process; bad targets refused.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cluster.rundir import read_events, read_jsonl
from tests.helpers import REPO, final_model, read_summary

# Validated at steps 6 and 12 on 102 held-out samples: shares that differ between ranks, a padded last batch.
SHORT = ("train.steps=12", "train.global_batch_size=64", "train.log_every_steps=4", "train.checkpoint_every_steps=6",
         "data.val_fraction=0.05", "train.eval_every_steps=6")
# Without dropout and augmentation, so that every strategy can match one process number for number.
PLAIN = ("model.dropout=0.0", "data.jitter=0.0")


@pytest.fixture(scope="module")
def package(tmp_path_factory) -> Path:
    """The example package ``mylab`` and its configs, somewhere only PYTHONPATH finds them."""
    root = tmp_path_factory.mktemp("outside")
    shutil.copytree(REPO / "examples" / "mylab", root / "mylab")
    shutil.copytree(REPO / "examples" / "myconf", root / "myconf")
    return root


@pytest.fixture(scope="module")
def one_process(package, tmp_path_factory) -> Path:
    """The run every strategy must match: one process on the whole global batch (once for the module)."""
    run_dir = tmp_path_factory.mktemp("one")
    train(package, *SHORT, *PLAIN, "cluster=debug", "strategy=single", f"hydra.run.dir={run_dir}")
    return run_dir


def train(package: Path, *overrides: str, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(package)}
    done = subprocess.run([sys.executable, "-m", "jobs.train", "--config-dir", str(package / "myconf"),
                           "model=resmlp", "data=shapes", "loss._target_=mylab.losses.smooth_ce", *overrides],
                          cwd=REPO, capture_output=True, text=True, timeout=300, env=env)
    if check:
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return done


def test_the_package_is_not_importable_from_the_repository():
    done = subprocess.run([sys.executable, "-c", "import mylab"], cwd=REPO, capture_output=True, text=True,
                          env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    assert done.returncode != 0


@pytest.mark.slow
@pytest.mark.parametrize("strategy, ranks", [
    (("strategy=ddp",), 2),
    (("strategy=fsdp",), 2),
    (("strategy=pipeline", "strategy.split_points=[blocks.2]"), 2),
    (("strategy=hybrid", "strategy.split_points=[blocks.2]"), 4),
], ids=["ddp", "fsdp", "pipeline", "hybrid"])
def test_a_user_model_trains_with_every_strategy_as_one_process_does(package, one_process, tmp_path, strategy, ranks):
    """With activation checkpointing and each block compiled (the aot_eager backend: the graphs dynamo captures,
    computing eager's numbers, without inductor's minutes of C++ compiling on these CPUs), which change no number."""
    train(package, *SHORT, *PLAIN, *strategy, f"cluster.tasks_per_node={ranks}", f"hydra.run.dir={tmp_path / 'p'}",
          "strategy.activation_checkpointing=true", "train.compile=true", "train.compile_backend=aot_eager")
    parallel, single = final_model(tmp_path / "p"), final_model(one_process)
    assert parallel.keys() == single.keys() and "blocks.3.linear.weight" in single
    for name in single:
        torch.testing.assert_close(parallel[name], single[name], atol=2e-6, rtol=0, msg=name)
    # Each held-out sample evaluated once, by one rank: the numbers of one process on the whole split.
    evaluated = {path: [(r["step"], r["val_loss"], r["val_accuracy"]) for r in read_jsonl(path / "metrics.jsonl")
                        if "val_loss" in r] for path in (tmp_path / "p", one_process)}
    assert [step for step, *_ in evaluated[one_process]] == [6, 12]
    for (step, loss, accuracy), (_, one_loss, one_accuracy) in zip(*evaluated.values(), strict=True):
        assert abs(loss - one_loss) < 1e-6 and accuracy == one_accuracy, (step, loss, one_loss)
    assert read_summary(tmp_path / "p")["val_loss"] == evaluated[tmp_path / "p"][-1][1]
    blocks = [e["blocks"] for e in read_events(tmp_path / "p") if e["event"] == "layout"][0]  # rank 0's
    staged = strategy[0] in ("strategy=pipeline", "strategy=hybrid")  # rank 0 holds the first stage's blocks
    assert blocks["checkpointed"] == blocks["compiled"] >= (1 if staged else 4), blocks
    if "strategy=fsdp" in strategy:  # the default rule: each member of the ModuleList is a unit
        layout = [e for e in read_events(tmp_path / "p") if e["event"] == "layout"]
        assert layout


def test_fsdp_units_default_to_the_members_of_a_module_list():
    from jobs.strategies import fsdp_units

    sys.path.insert(0, str(REPO / "examples"))
    try:
        from mylab.nets import ResMLP
    finally:
        sys.path.remove(str(REPO / "examples"))
    model = ResMLP((32,), 4, depth=3)
    assert fsdp_units(model) == list(model.blocks)[::-1]
    assert [type(unit).__name__ for unit in fsdp_units(model, ("Linear",))] == ["Linear"] * 5
    with pytest.raises(ValueError, match=r"strategy.fsdp_units=\['Conv2d'\]: no module of ResMLP is of these classes"):
        fsdp_units(model, ("Conv2d",))


BAD = [
    (("model._target_=mylab.nets.UNet",), "error: model._target_=mylab.nets.UNet: mylab.nets has no callable 'UNet'"),
    (("model._target_=mylib.nets.ResMLP",), "error: model._target_=mylib.nets.ResMLP: no module named 'mylib'"),
    (("model.widht=3",), "error: model.widht: mylab.nets.ResMLP does not take it"),
    (("loss.smoothness=0.1",), "error: loss.smoothness: mylab.losses.smooth_ce does not take it"),
    (("data.sized=3",), "error: data.sized: mylab.data.make_dataset does not take it"),
    (("~model.width", "~model.depth", "model._target_=mylab.data.make_dataset"),
     "error: model._target_=mylab.data.make_dataset makes a Shapes, not a torch.nn.Module"),
    (("strategy=pipeline", "strategy.split_points=[block.2]"),
     "error: strategy.split_points ['block.2'] name no module of mylab.nets.ResMLP (its __init__ assigns: stem, "
     "blocks, head)"),
]


@pytest.mark.parametrize("overrides, message", BAD, ids=["no-name", "no-module", "model-kwarg", "loss-kwarg",
                                                         "data-kwarg", "not-a-module", "split-point"])
def test_a_bad_target_is_refused_on_the_login_node_before_any_rank_starts(package, tmp_path, overrides, message):
    done = train(package, *overrides, f"hydra.run.dir={tmp_path / 'r'}", check=False)
    assert done.returncode == 2 and done.stderr.startswith(message) and len(done.stderr.splitlines()) == 1, \
        done.stderr
    assert not (tmp_path / "r").exists()  # nothing started, nothing left


@pytest.mark.parametrize("overrides, message", [
    (("~model.width", "~model.depth", "model._target_=random.random"),  # unannotated: known once called
     "model._target_=random.random returned a float, not a torch.nn.Module"),
    (("data._target_=torch.zeros", "data.size=[3]"), "its items are Tensors, not (input, target) pairs"),
    (("strategy=pipeline", "strategy.split_points=[blocks.9]"), "strategy.split_points ['blocks.9'] name no module"),
])
def test_a_target_that_builds_the_wrong_thing_ends_the_run_at_once_with_one_line(package, tmp_path, overrides,
                                                                                 message):
    done = train(package, *SHORT, *overrides, f"hydra.run.dir={tmp_path / 'r'}", check=False)
    assert done.returncode != 0 and message in done.stderr, done.stderr[-3000:]
    failed = [e for e in read_events(tmp_path / "r") if e["event"] == "failed"] if (tmp_path / "r").exists() else []
    assert all(e.get("kind") in ("config", "final") for e in failed)  # not retried: it would only repeat
