"""Config groups composed with Hydra's compose(), and the plan they become."""

import dataclasses
import inspect
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from cluster.requeue import RequeueBudget
from cluster.slurm.resources import SlurmResources
from jobs.checks import check_before_start
from jobs.data import CIFAR10Settings, FakeSettings, FilesSettings, SyntheticSettings
from jobs.models import CNNSettings, MLPSettings, TransformerSettings
from jobs.plan import JobPlan, plan_from_config
from jobs.settings import (
    ClusterConfig,
    DistributedConfig,
    OptimConfig,
    SlurmCluster,
    StrategyConfig,
    SweepSettings,
    TrainConfig,
)
from jobs.user_errors import describe
from tests.helpers import REPO


def plan(*overrides: str) -> JobPlan:
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base=None):
        return plan_from_config(compose(config_name="train", overrides=list(overrides)))


def test_default_is_the_seed_articles_mlp_with_ddp_on_two_local_ranks():
    p = plan()
    assert (p.model.path, p.data.path, p.strategy.name) == ("jobs.models.mlp", "jobs.data.synthetic", "ddp")
    assert (p.loss.path, p.cluster.name, p.cluster.tasks_per_node) == ("torch.nn.functional.cross_entropy", "local", 0)
    assert MLPSettings().hidden == 128 and SyntheticSettings().image_shape == (1, 28, 28) and not p.model.kwargs
    assert p.world_size == 2  # 0: one rank per visible GPU, and the tests see none: 2 on the CPU
    assert p.train.steps > 0 and p.train.global_batch_size % 2 == 0


@pytest.mark.parametrize("group, choice", [
    ("model", "cnn"), ("model", "resnet18"), ("model", "transformer"), ("data", "mnist"), ("data", "cifar10"),
    ("data", "fake"), ("strategy", "single"), ("optim", "adamw"), ("cluster", "debug"), ("cluster", "inline"),
])
def test_every_group_option_composes_into_a_plan(group, choice):
    assert getattr(plan(f"{group}={choice}"), group).name == choice


def test_a_target_from_the_command_line_takes_only_its_own_keyword_arguments():
    for choice in ("mlp", "cnn", "transformer"):  # the built-in model's settings do not carry over to the user's
        p = plan(f"model={choice}", "model._target_=mylab.nets.UNet", "model.width=64")
        assert (p.model.path, dict(p.model.kwargs)) == ("mylab.nets.UNet", {"width": 64})
    p = plan("data._target_=mylab.data.make", "loss._target_=mylab.losses.focal", "loss.gamma=2.0")
    assert (p.data.path, dict(p.data.kwargs), p.loss.path, dict(p.loss.kwargs)) == (
        "mylab.data.make", {}, "mylab.losses.focal", {"gamma": 2.0})


def test_overrides_reach_typed_fields():
    p = plan("train.steps=7", "optim.lr=0.5", "data.image_shape=[3,8,8]", "model=cnn", "model.channels=[4]")
    assert (p.train.steps, p.optim.lr, p.data.kwargs, p.model.kwargs) == (
        7, 0.5, {"image_shape": [3, 8, 8]}, {"channels": [4]})


@pytest.mark.parametrize("override, message", [
    ("train.steps=0", "train.steps must be positive"),
    ("train.steps=-3", "train.steps must be positive"),
    ("train.global_batch_size=0", "train.global_batch_size must be positive"),
    ("cluster.tasks_per_node=-1", "cluster.tasks_per_node must not be negative"),
    ("optim.lr=-1", "optim.lr must be positive"),
    ("optim.schedule=linear", "unknown optim.schedule 'linear'"),
    ("+train.epochs=3", "unknown setting train.epochs; train takes: steps, global_batch_size"),
    ("distributed.backend=mpi", "unknown distributed.backend"),
    ("train.precision=fp8", "unknown train.precision 'fp8'; choose one of: fp32, bf16, fp16"),
    ("train.grad_clip_norm=-1", "train.grad_clip_norm must not be negative; 0 turns clipping off"),
    ("train.eval_every_steps=-1", "train.eval_every_steps must not be negative; 0 evaluates at the end only"),
    ("data.val_fraction=1", r"data.val_fraction=1.0 is not in \[0, 1\); hold out a share such as 0.1"),
    ("data.val_fraction=some", "data.val_fraction='some' is not a number; hold out a share such as 0.1"),
])
def test_bad_values_raise_with_the_field_and_a_fix(override, message):
    with pytest.raises(ValueError, match=message):
        plan(*override.split())


@pytest.mark.parametrize("override, message", [
    ("train.steps=ten", "Value 'ten' of type 'str' could not be converted to Integer"),
    ("cluster=slurm cluster.timeout_min=1.5", "Value '1.5' of type 'float' could not be converted to Integer"),
    ("optim.lr=[1,2]", "could not be converted to Float"),
    ("cluster=local cluster.partition=gpu", "Key 'partition' not in 'ClusterConfig'"),
])
def test_values_of_the_wrong_type_are_refused_by_the_schema_as_the_config_is_composed(override, message):
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException) as refused:
        plan(*override.split())
    assert message in str(refused.value.__cause__)


def test_slurm_group_becomes_resources_with_tasks_following_gpus():
    p = plan("cluster=slurm", "cluster.nodes=2", "cluster.gpus_per_node=4", "+cluster.additional.mail-type=END",
             "cluster.setup=[module load cuda]")
    assert p.slurm is not None and (p.slurm.nodes, p.slurm.tasks_per_node, p.world_size) == (2, 4, 8)
    assert p.slurm.additional == (("mail-type", "END"),) and p.slurm.setup == ("module load cuda",)
    assert p.cluster.dry_run is False
    assert plan("cluster=slurm").slurm.tasks_per_node == 1
    with pytest.raises(ValueError, match="cluster.additional flag .MailType. is no sbatch option name"):
        plan("cluster=slurm", "+cluster.additional.MailType=END")


def test_world_size_checks_name_both_factors():
    p = plan("train.global_batch_size=10")
    with pytest.raises(ValueError, match="global_batch_size=10 is not divisible by the 3"):
        p.check_world(3)
    with pytest.raises(ValueError, match="strategy=single trains on one rank"):
        plan("strategy=single").check_world(2)


def test_micro_batches_give_the_accumulation_and_must_divide_a_replicas_share():
    dims = plan("train.micro_batch_size=16").check_world(2)  # 128 over 2 replicas: 64 each, 4 passes of 16
    assert (dims.replica_batch_size, dims.forward_batch_size, dims.accumulation) == (64, 16, 4)
    assert plan().check_world(2).accumulation == 1  # 0: the whole share at once
    # 0 at the job's full size: an elastic job on fewer ranks accumulates to the same global batch
    elastic = plan("cluster=slurm", "cluster.nodes=4", "cluster.min_nodes=1")
    assert [elastic.check_world(n).accumulation for n in (4, 2, 1)] == [1, 2, 4]
    pipelined = plan("model=transformer", "strategy=hybrid", "strategy.microbatches=4", "train.micro_batch_size=4",
                     "cluster.tasks_per_node=4").check_world(4)  # 64 per replica: 4 schedule runs of 4 x 4
    assert (pipelined.forward_batch_size, pipelined.accumulation) == (4, 4)
    with pytest.raises(ValueError) as refused:
        check_before_start(plan("train.micro_batch_size=24"), Path("/tmp/never-made"))
    assert describe(refused.value).endswith("train.global_batch_size=128 over 2 data-parallel replica(s) is 64 "
                                            "samples each, which train.micro_batch_size=24 does not divide; use a "
                                            "train.micro_batch_size that divides 64")


@pytest.mark.parametrize("overrides, message", [
    (("cluster.nodes=4", "cluster.min_nodes=3"), "on 3 node(s) (3 ranks), which cluster.min_nodes allows: the "
     "parallel plan does not fit: train.global_batch_size=128 is not divisible by the 3 data-parallel replicas"),
    (("cluster.nodes=2", "cluster.min_nodes=1", "model=transformer", "strategy=hybrid"),
     "on 1 node(s) (1 ranks), which cluster.min_nodes allows: the parallel plan does not fit: dp x pp = 1 x 2"),
    (("cluster.nodes=2", "cluster.min_nodes=3"), "cluster.min_nodes=3 must be between 0 (not elastic) and "
     "cluster.nodes=2"),
])
def test_an_elastic_job_must_fit_every_node_count_it_may_get(tmp_path, overrides, message):
    with pytest.raises(ValueError) as refused:
        check_before_start(plan("cluster=slurm", *overrides), tmp_path)
    assert message in str(refused.value)


def test_an_elastic_job_accepts_another_world_size_without_allow_changes():
    assert plan("cluster=slurm", "cluster.nodes=4", "cluster.min_nodes=2").allowed_changes == ("layout.world_size",)
    assert plan("cluster=slurm", "cluster.nodes=4").allowed_changes == ()
    assert plan("train.allow_changes=[optim.lr]").allowed_changes == ("optim.lr",)


def test_fingerprint_ignores_length_and_cadence_but_not_the_maths():
    base = plan().fingerprint_config()
    assert plan("train.steps=5", "train.log_every_steps=1", "cluster.tasks_per_node=4").fingerprint_config() == base
    assert plan("optim.lr=0.01").fingerprint_config()["optim.lr"] == 0.01
    assert plan("train.seed=1").fingerprint_config() != base
    assert plan("train.precision=bf16").fingerprint_config() == {**base, "train.precision": "bf16"}
    assert plan("train.grad_clip_norm=1").fingerprint_config() == {**base, "train.grad_clip_norm": 1.0}
    # what is held out is not trained on; when and how often it is evaluated changes nothing
    assert plan("data.val_fraction=0.1").fingerprint_config() == {**base, "data.val_fraction": 0.1}
    assert plan("data.val_fraction=0.1", "train.eval_every_steps=5").fingerprint_config() == {
        **base, "data.val_fraction": 0.1}


def test_settings_added_later_leave_the_fingerprint_of_a_run_that_keeps_their_defaults_as_it_was():
    """A checkpoint written before train.precision and train.grad_clip_norm existed still resumes."""
    assert plan("train.precision=fp32", "train.grad_clip_norm=0").fingerprint_config() == plan().fingerprint_config()
    assert not {"train.precision", "train.grad_clip_norm"} & set(plan().fingerprint_config())
    assert plan("data.val_fraction=0").fingerprint_config() == plan().fingerprint_config()


def test_data_val_fraction_is_the_trainers_and_never_reaches_the_data_target():
    p = plan("data.val_fraction=0.2", "data.num_samples=100")
    assert p.split.val_fraction == 0.2 and dict(p.data.kwargs) == {"num_samples": 100}


@pytest.mark.parametrize("overrides, message", [
    (("train.eval_every_steps=50",), "train.eval_every_steps=50 needs validation data, and jobs.data.synthetic has "
     "no split of its own; hold out a share with data.val_fraction=0.1"),
    (("data=fake", "data.val_fraction=0.1", "train.global_batch_size=4096"), "the dataset has 3686 samples, fewer "
     "than one global batch"),  # 4096 less what val_fraction holds out
])
def test_validation_settings_that_cannot_work_are_refused_before_any_rank_starts(tmp_path, overrides, message):
    with pytest.raises(ValueError) as refused:
        check_before_start(plan(*overrides), tmp_path / "run")
    assert message in str(refused.value)


@pytest.mark.parametrize("override, message", [
    ("model=transformer model.heads=3", "not divisible by model.heads=3"),
    ("model.hiden=3", "unknown setting model.hiden; model=mlp takes: hidden"),
    ("model.hidden=wide", "model.hidden='wide' is not a int; set model.hidden=<a int>"),
    ("data.num_samples=0", "data.num_samples must be positive"),
    ("model._target_=nosuchpackage.Net", "model._target_=nosuchpackage.Net: no module named 'nosuchpackage'"),
    ("model._target_=torch.nn.Nope", "model._target_=torch.nn.Nope: torch.nn has no callable 'Nope'"),
    ("model._target_=torch.nn.Linear model.in_features=3 model.out=2",
     "model.out: torch.nn.Linear does not take it"),
    ("model._target_=torch.nn.Linear", "torch.nn.Linear needs in_features, out_features: set model.in_features"),
])
def test_built_in_settings_and_targets_are_checked_before_anything_starts(tmp_path, override, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        check_before_start(plan(*override.split()), tmp_path)


@pytest.mark.parametrize("choice", ["mlp", "cnn", "resnet18", "transformer"])
def test_built_in_models_pass_the_login_checks_with_torch_imported(tmp_path, choice):
    import torch  # noqa: F401  (with torch loaded, the checks also look at what a model target returns)

    check_before_start(plan(f"model={choice}", "data.num_samples=4096"), tmp_path)


@pytest.mark.parametrize("cls", [MLPSettings, CNNSettings, TransformerSettings, SyntheticSettings, FakeSettings,
                                 FilesSettings, CIFAR10Settings, OptimConfig, StrategyConfig, ClusterConfig,
                                 SlurmCluster, DistributedConfig, TrainConfig, SlurmResources, RequeueBudget,
                                 SweepSettings])
def test_every_field_has_a_one_line_doc_in_the_source(cls):
    sources = [inspect.getsource(base).splitlines() for base in cls.__mro__ if dataclasses.is_dataclass(base)]
    for field in dataclasses.fields(cls):  # its doc is where it is defined: the class or a base it extends
        line = next(line for source in sources for line in source if line.strip().startswith(f"{field.name}:"))
        assert "  # " in line, f"{cls.__name__}.{field.name} has no doc comment"
