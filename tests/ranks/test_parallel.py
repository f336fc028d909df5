"""Pipeline, hybrid (dp x pp) and FSDP: the plan's checks, the cut, and equality with one process (gloo, CPU)."""

from pathlib import Path

import pytest
import torch

from cluster.parallel_dims import ParallelDims
from cluster.rundir import read_events
from jobs.data import DatasetInfo
from jobs.loop import build_model
from jobs.pipeline import split_stages
from jobs.plan import stage_layers
from jobs.targets import Target
from jobs.user_errors import describe
from tests.helpers import final_model, read_summary, run_train

TRANSFORMER = ("model=transformer", "model.depth=2", "data.image_shape=[1,8,8]")
SHORT = ("train.steps=10", "train.global_batch_size=64", "train.log_every_steps=5", "train.checkpoint_every_steps=5")


def test_every_misfit_of_a_plan_is_named_at_once():
    with pytest.raises(ValueError) as error:
        ParallelDims(world_size=4, dp=1, pp=3, microbatches=2, layers=2, global_batch_size=9)
    message = str(error.value)  # in the library's terms
    assert "dp x pp = 1 x 3 = 3, but the job has 4 ranks" in message
    assert "the model has 2 layers, fewer than pp x stages_per_rank = 3 x 1 = 3 stages" in message
    assert "microbatches=2 is fewer than the 3 stages" in message
    assert "global_batch_size=9 is not divisible by dp x microbatches = 1 x 2 = 2" in message
    told = describe(error.value)  # what the trainer tells its users: config keys
    assert "strategy.microbatches=2 is fewer" in told and "train.global_batch_size=9 is not divisible" in told
    assert "lower strategy.pp or strategy.stages_per_rank, or deepen the model (model.depth)" in told


def test_pipeline_ranks_are_consecutive_and_replicas_span_nodes():
    dims = ParallelDims(world_size=4, dp=2, pp=2, microbatches=4, layers=6, global_batch_size=64)
    assert [dims.coordinates(rank) for rank in range(4)] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert dims.dp_peers(1) == [1, 3] and dims.stages_of(1) == [1]
    interleaved = ParallelDims(world_size=2, dp=1, pp=2, microbatches=4, stages_per_rank=2, layers=5)
    assert interleaved.stages_of(0) == [0, 2] and [list(interleaved.layers_of(s)) for s in range(4)] == [
        [0, 1], [2], [3], [4]]


def test_stages_keep_the_whole_models_layer_names():
    cfg = Target("model", "jobs.models.transformer", {"depth": 2, "dim": 16, "heads": 2})
    model = build_model(cfg, DatasetInfo(None, (1, 8, 8), 10))
    dims = ParallelDims(world_size=2, dp=1, pp=2, microbatches=2, layers=stage_layers(cfg))
    stages = split_stages(model, dims)
    names = [name for stage in stages for name in stage.state_dict()]
    assert sorted(names) == sorted(model.state_dict()) and list(stages[1].named_children())[0][0] == "2"


@pytest.fixture(scope="module")
def one_process(tmp_path_factory) -> Path:
    """The run every strategy must match: one process on the whole global batch (once for the module)."""
    run_dir = tmp_path_factory.mktemp("one")
    run_train(*TRANSFORMER, *SHORT, "cluster=debug", "strategy=single", f"hydra.run.dir={run_dir}")
    return run_dir


@pytest.mark.slow
@pytest.mark.parametrize("strategy, ranks", [
    (("strategy=pipeline", "strategy.schedule=1f1b"), 2),
    (("strategy=pipeline", "strategy.schedule=gpipe"), 2),
    (("strategy=pipeline", "strategy.schedule=interleaved", "strategy.stages_per_rank=2"), 2),
    (("strategy=hybrid",), 4),
    (("strategy=hybrid", "strategy.replicate=fsdp"), 4),
    (("strategy=fsdp",), 2),
], ids=["pipeline-1f1b", "pipeline-gpipe", "pipeline-interleaved", "hybrid-ddp", "hybrid-fsdp", "fsdp"])
def test_parallel_strategies_match_one_process_on_the_global_batch(tmp_path, one_process, strategy, ranks):
    run_train(*TRANSFORMER, *SHORT, *strategy, f"cluster.tasks_per_node={ranks}", f"hydra.run.dir={tmp_path / 'p'}")
    parallel, single = final_model(tmp_path / "p"), final_model(one_process)
    assert parallel.keys() == single.keys()
    for name in single:
        torch.testing.assert_close(parallel[name], single[name], atol=2e-6, rtol=0, msg=name)
    assert read_summary(tmp_path / "p")["final_loss"] == pytest.approx(read_summary(one_process)["final_loss"],
                                                                       abs=1e-5)


@pytest.mark.slow
def test_a_cnn_is_cut_into_two_stages_and_matches_one_process(tmp_path):
    cnn = ("model=cnn", "model.channels=[4,8]", "data.image_shape=[3,8,8]", *SHORT)
    run_train(*cnn, "cluster=debug", "strategy=single", f"hydra.run.dir={tmp_path / 'one'}")
    run_train(*cnn, "strategy=pipeline", "cluster.tasks_per_node=2", f"hydra.run.dir={tmp_path / 'p'}")
    layout = next(e for e in read_events(tmp_path / "p") if e["event"] == "layout")
    layers = [rank["layers"] for rank in layout["ranks"]]
    assert len(layers) == 2 and "all" not in layers and layers[0] != layers[1], layers
    parallel, single = final_model(tmp_path / "p"), final_model(tmp_path / "one")
    assert parallel.keys() == single.keys()
    for name in single:
        torch.testing.assert_close(parallel[name], single[name], atol=2e-6, rtol=0, msg=name)


@pytest.mark.parametrize("overrides, message", [
    (("strategy=hybrid", "strategy.pp=3", "cluster.tasks_per_node=4"), "dp x pp = 1 x 3 = 3, but the job has 4 ranks"),
    (("strategy=pipeline", "model=mlp"),
     "the model cannot be cut into pipeline stages; give one that can (model=transformer, model=cnn, or "
     "strategy.split_points for your own)"),
    (("strategy=pipeline", "strategy.microbatches=1"), "strategy.microbatches=1 is fewer than the 2 stages"),
    (("strategy=pipeline", "strategy.schedule=zigzag"), "strategy.schedule"),
    (("strategy=pipeline", "cluster.tasks_per_node=4"), "strategy.pp=2 must equal the job's 4 ranks"),
    (("strategy=hybrid", "cluster.tasks_per_node=4", "model.depth=1", "strategy.pp=4"),
     "the model has 3 layers, fewer than pp x stages_per_rank = 4 x 1 = 4 stages"),
])
def test_bad_parallel_plans_are_refused_before_anything_starts(tmp_path, overrides, message):
    model = () if "model=mlp" in overrides else TRANSFORMER
    result = run_train(*model, *SHORT, *overrides, f"hydra.run.dir={tmp_path}", check=False)
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr, result.stderr
    assert not (tmp_path / "logs").exists() and not (tmp_path / "checkpoints").exists()
