"""Bad input: one clear line with a hint, a non-zero exit, and nothing half-written or lost."""

import pytest

from cluster.rundir import read_events
from cluster.runtime.checkpoint import list_checkpoints
from tests.helpers import read_summary, run_train

SHORT = ("train.steps=10", "train.global_batch_size=32", "train.checkpoint_every_steps=5")


def assert_refused(result, *fragments: str, code: int = 2) -> None:
    assert result.returncode == code, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    for fragment in fragments:
        assert fragment in result.stderr, result.stderr


def assert_nothing_written(run_dir) -> None:
    for name in ("checkpoints", "metrics.jsonl", "summary.json", "logs"):
        assert not (run_dir / name).exists(), name


@pytest.mark.parametrize("override, fragments", [
    ("model=gpt5", ("Could not find 'model/gpt5'", "Available options in 'model'", "mlp")),
    ("strategy=zero9", ("Could not find 'strategy/zero9'", "ddp")),
])
def test_unknown_group_option_lists_the_choices(tmp_path, override, fragments):
    result = run_train(override, f"hydra.run.dir={tmp_path}", check=False)
    assert_refused(result, *fragments, code=1)
    assert_nothing_written(tmp_path)


@pytest.mark.parametrize("override, fragments", [
    ("train.steps=0", ("error: train.steps must be positive", "set train.steps=")),
    ("train.global_batch_size=-8", ("train.global_batch_size must be positive",)),
    ("cluster.tasks_per_node=-1", ("cluster.tasks_per_node must not be negative",)),
    ("train.global_batch_size=33", ("global_batch_size=33 is not divisible by the 2", "use a multiple of 2")),
    ("strategy=single", ("strategy=single trains on one rank, but the job has 2",)),
    ("data=mnist data.root=/nonexistent", ("mnist files missing in /nonexistent/MNIST/raw", "train-images-idx3-ubyte",
                                           "data.download=true")),
])
def test_bad_config_is_refused_before_any_rank_starts(tmp_path, override, fragments):
    result = run_train(*override.split(), f"hydra.run.dir={tmp_path}", check=False)
    assert_refused(result, *fragments)
    assert_nothing_written(tmp_path)


@pytest.mark.parametrize("run_dir", ["/proc/clusterjobs-test", "/etc/hostname/run"])
def test_unwritable_run_directory(run_dir):
    result = run_train(f"hydra.run.dir={run_dir}", check=False)
    assert_refused(result, f"cannot write to the run directory {run_dir}", "hydra.run.dir=PATH")


@pytest.mark.slow
def test_corrupt_checkpoint_is_refused_and_kept(tmp_path):
    run_train(*SHORT, f"hydra.run.dir={tmp_path}")
    state = tmp_path / "checkpoints" / "step-000010" / "__0_0.distcp"
    state.write_bytes(state.read_bytes()[:100])
    result = run_train(*SHORT, f"hydra.run.dir={tmp_path}", check=False)
    assert_refused(result, "step-000010 is corrupt: __0_0.distcp is 100 bytes", "out of the way")
    assert state.stat().st_size == 100 and (tmp_path / "checkpoints" / "step-000005").is_dir()


@pytest.mark.slow
def test_checkpoint_of_another_config_is_refused(tmp_path):
    run_train(*SHORT, f"hydra.run.dir={tmp_path}")
    result = run_train(*SHORT, "optim.lr=0.5", f"hydra.run.dir={tmp_path}", check=False)
    assert_refused(result, "belongs to another configuration or layout (optim.lr: 0.05 -> 0.5)", "hydra.run.dir=")
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step-000005", "step-000010"]


@pytest.mark.slow
def test_longer_training_resumes_despite_a_changed_step_count(tmp_path):
    run_train(*SHORT, f"hydra.run.dir={tmp_path / 'ten'}")
    result = run_train(*SHORT, "train.steps=15", f"hydra.run.dir={tmp_path / 'ten'}")
    assert "done: 15 steps" in result.stdout
    run_train(*SHORT, "train.steps=15", f"hydra.run.dir={tmp_path / 'fifteen'}")
    # the five more steps continue the ten, not a run retrained from the start (which would also say 15 steps)
    assert read_summary(tmp_path / "ten")["resumed_from_step"] == 10
    assert read_summary(tmp_path / "ten")["param_digest"] == read_summary(tmp_path / "fifteen")["param_digest"]


@pytest.mark.slow
def test_a_checkpoint_of_another_rank_count_is_refused_and_allow_changes_accepts_it(tmp_path):
    run_train(*SHORT, f"hydra.run.dir={tmp_path}")  # 2 ranks
    one_rank = (*SHORT, "train.steps=15", "cluster.tasks_per_node=1", f"hydra.run.dir={tmp_path}")
    result = run_train(*one_rank, check=False)
    assert_refused(result, "step-000010 belongs to another configuration or layout (layout.world_size: 2 -> 1)",
                   "train.allow_changes=[layout.world_size]")
    assert [step for step, _ in list_checkpoints(tmp_path / "checkpoints")] == [5, 10]
    run_train(*one_rank, "train.allow_changes=[layout.world_size]")
    summary = read_summary(tmp_path)
    assert (summary["resumed_from_step"], summary["steps"], summary["world_size"]) == (10, 15, 1)
    resized = [e for e in read_events(tmp_path) if e["event"] == "resized"]
    assert [(e["was"], e["world_size"]) for e in resized] == [(2, 1)], resized
