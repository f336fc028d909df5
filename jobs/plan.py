"""A composed config becomes a ``JobPlan``: every setting typed and checked, and the job's parallel layout.

``plan_from_config`` is the one place where omegaconf turns into plain objects; everything after it
(launching, the ranks, the loop) sees dataclasses only.
"""

import dataclasses
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from cluster.devices import LocalDevices, place_local_ranks, visible_gpus
from cluster.parallel_dims import ParallelDims
from cluster.requeue import RequeueBudget
from cluster.slurm.resources import SlurmResources
from jobs.fingerprint import fingerprint_config
from jobs.settings import (
    ClusterConfig,
    DataSplit,
    DistributedConfig,
    OptimConfig,
    Requeue,
    SlurmCluster,
    StrategyConfig,
    TrainConfig,
)
from jobs.targets import Target, settings_of


def sequence_layers(model: Target) -> tuple[str, ...] | None:
    """The layers of a built-in model that is a flat sequence, by kind, in order: where pipeline stages may be cut.
    None for any other model (a user's is counted on the ranks, or cut at ``strategy.split_points``)."""
    if model.path in ("jobs.models.transformer", "jobs.models.cnn", "jobs.models.gpt"):
        return settings_of(model, model.load().settings).layers()  # type: ignore[attr-defined]
    return None


def stage_layers(model: Target) -> int | None:
    """How many layers the planner may cut ``model`` at (None: not known before it is built)."""
    layers = sequence_layers(model)
    return None if layers is None else len(layers)


@dataclasses.dataclass(frozen=True)
class JobPlan:
    """Everything a rank needs, validated as a whole."""

    model: Target  # the model's code and keyword arguments (jobs.targets)
    data: Target
    loss: Target
    optim: OptimConfig
    strategy: StrategyConfig
    cluster: ClusterConfig  # where ranks run (cluster=slurm: its name, wait, dry_run, health_check; resources in
    # ``slurm``)
    distributed: DistributedConfig
    train: TrainConfig
    requeue: RequeueBudget = RequeueBudget()  # how often the job may come back, per cause
    slurm: SlurmResources | None = None  # the job's resources when cluster=slurm
    split: DataSplit = DataSplit()  # data.val_fraction: the validation data held out of a dataset without a split

    @property
    def world_size(self) -> int | None:
        """Ranks the launcher will start; None for cluster=inline, whose ranks exist already."""
        if self.slurm is not None:
            return self.slurm.world_size
        if self.cluster.name == "local":
            return self.local_devices().ranks
        return {"debug": 1}.get(self.cluster.name)

    def local_devices(self) -> LocalDevices:
        """cluster=local: how many ranks, each on which GPU, over which backend (``cluster.devices``)."""
        return place_local_ranks(ranks=self.cluster.tasks_per_node, backend=self.distributed.backend,
                                 visible=visible_gpus())

    @property
    def rank_backend(self) -> str:
        """The backend the ranks join with. On Slurm, ``auto`` follows what the job asked for (GPUs or not), not
        what a node happens to show; cluster=local has it decided by ``local_devices`` (``jobs.start``)."""
        if self.distributed.backend != "auto" or self.slurm is None:
            return self.distributed.backend
        return "nccl" if self.slurm.gpus_per_node else "gloo"

    def check_world(self, world_size: int) -> ParallelDims:
        """The split of ``world_size`` ranks this plan asks for; raises unless it fits."""
        strategy = self.strategy
        if strategy.name == "single" and world_size != 1:
            raise ValueError(
                f"strategy=single trains on one rank, but the job has {world_size}; "
                "use strategy=ddp, or cluster.tasks_per_node=1"
            )
        if strategy.name == "pipeline" and strategy.pp != world_size:
            raise ValueError(
                f"strategy=pipeline puts one stage per rank, so strategy.pp={strategy.pp} must equal the job's "
                f"{world_size} ranks; set strategy.pp={world_size}, or use strategy=hybrid for replicas of the pipeline"
            )
        pp = strategy.pp if strategy.pipelined else 1
        layers = stage_layers(self.model) if not strategy.split_points else None
        microbatches = strategy.microbatches if strategy.pipelined else 1
        micro = self.train.micro_batch_size
        if not micro:  # the per-rank batch of the job at its full size: fewer ranks (an elastic job) accumulate
            full_dp = max(1, (self.world_size or world_size) // pp)
            micro = max(1, self.train.global_batch_size // (full_dp * microbatches))
        return ParallelDims(
            world_size=world_size, dp=max(1, world_size // pp), pp=pp,
            microbatches=microbatches,
            stages_per_rank=strategy.stages_per_rank if strategy.pipelined else 1,
            layers=layers if layers is not None else len(strategy.split_points) + 1 if strategy.split_points
            else None, cut_by_name=bool(strategy.split_points),
            counted_later=layers is None and not self.model.path.startswith("jobs.models."),  # a user's model
            global_batch_size=self.train.global_batch_size, micro_batch_size=micro,
        )

    @property
    def allowed_changes(self) -> tuple[str, ...]:
        """What a resume may change (``train.allow_changes``); an elastic job's number of ranks besides."""
        elastic = ("layout.world_size",) if self.slurm is not None and self.slurm.elastic else ()
        return tuple(dict.fromkeys((*self.train.allow_changes, *elastic)))

    @property
    def stop_signal(self) -> str:
        """The warning signal the ranks listen for (besides SIGTERM)."""
        return self.slurm.signal if self.slurm is not None else "USR2"  # submitit's local controller sends USR2

    @property
    def signal_lead_s(self) -> float:
        """Seconds between the warning signal and the end of the allocation."""
        return self.slurm.signal_lead_s if self.slurm is not None else self.cluster.signal_lead_s

    def fingerprint_config(self) -> dict[str, Any]:
        """The settings a checkpoint must match (``jobs.fingerprint``); ``cluster.Job`` adds the number of ranks."""
        return fingerprint_config(self.model, self.data, self.loss, self.optim, self.strategy, self.train,
                                  self.split)


def plan_from_config(cfg: DictConfig) -> JobPlan:
    """Turn a composed config into a validated plan; bad values raise ValueError with the key and the fix.

    Composition (Hydra, against the schemas in ``jobs.settings``) already checked every value's type.
    """
    try:
        tree = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    except OmegaConfBaseException as error:
        raise ValueError(config_message(error)) from None
    assert isinstance(tree, dict)
    return plan_from_tree({str(key): value for key, value in tree.items()})


def plan_from_tree(tree: dict[str, Any]) -> JobPlan:
    """``plan_from_config`` of a composed config already made plain (a sweep's members, ``hydra_plugins``)."""

    def section(group: str) -> dict[str, Any]:
        values = tree.get(group)
        if not isinstance(values, dict):
            raise ValueError(f"the config has no '{group}' section; select one with {group}=NAME")
        return values

    def build(cls: Any, group: str) -> Any:
        try:
            return cls(**section(group))
        except TypeError as error:  # a key the schema does not have (``+train.epochs=3``)
            unknown = str(error).rpartition("argument ")[2].strip("'")
            known = ", ".join(field.name for field in dataclasses.fields(cls))
            raise ValueError(f"unknown setting {group}.{unknown}; {group} takes: {known}") from None

    cluster, slurm = section("cluster"), None
    if cluster.get("name") == "slurm":
        settings = build(SlurmCluster, "cluster")
        slurm = settings.resources()
        where = ClusterConfig(name="slurm", wait=settings.wait, dry_run=settings.dry_run,
                              health_check=settings.health_check)
    else:
        where = build(ClusterConfig, "cluster")
    data = dict(section("data"))  # data.val_fraction is the trainer's; the other keys are data._target_'s
    split = DataSplit(**{field.name: data.pop(field.name) for field in dataclasses.fields(DataSplit)
                         if field.name in data})
    code = {group: Target.from_config(group, data if group == "data" else tree.get(group))
            for group in ("model", "data", "loss")}
    return JobPlan(model=code["model"], data=code["data"], loss=code["loss"], optim=build(OptimConfig, "optim"),
                   strategy=build(StrategyConfig, "strategy"), cluster=where,
                   distributed=build(DistributedConfig, "distributed"), train=build(TrainConfig, "train"),
                   requeue=build(Requeue, "requeue"), slurm=slurm, split=split)


def config_message(error: OmegaConfBaseException) -> str:
    """OmegaConf's complaint as one line with the key and the fix."""
    key = getattr(error, "full_key", "") or "?"
    first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    if "Missing mandatory value" in first:
        return f"{key} is not set; add {key}=VALUE"
    if "could not be converted" in first or "Invalid type" in first:
        return f"{key}: {first}; set {key}=<a value of that type>"
    return f"{key}: {first}"
