"""Typed, validated settings: what a composed Hydra config becomes before anything runs.

Each dataclass mirrors one config group in ``conf/``; every field has one line of doc, and
``__post_init__`` raises ``ValueError`` with the fix. ``plan_from_config`` is the only place that
touches omegaconf.
"""

import dataclasses
import json
from typing import Any

from omegaconf import DictConfig, OmegaConf

from cluster.parallel_dims import ParallelDims
from cluster.requeue import RequeueBudget
from cluster.slurm import SlurmResources
from cluster.validation import require_one_of, require_positive

MODELS = ("mlp", "cnn", "resnet18", "transformer")
DATASETS = ("synthetic", "mnist", "cifar10", "fake")
STRATEGIES = ("ddp", "fsdp", "single", "pipeline", "hybrid")
SCHEDULES_PP = ("gpipe", "1f1b", "interleaved")
OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("constant", "cosine")
CLUSTERS = ("local", "debug", "inline", "slurm")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    name: str  # architecture: mlp, cnn, resnet18 or transformer
    hidden: int = 128  # mlp: width of the hidden layer (128 is the seed article's SimpleModel)
    channels: tuple[int, ...] = (32, 64)  # cnn: output channels of each conv block
    dim: int = 64  # transformer: token embedding width
    depth: int = 4  # transformer: number of decoder blocks (pipeline stages split these)
    heads: int = 4  # transformer: attention heads; must divide dim

    def __post_init__(self) -> None:
        require_one_of("model", self.name, MODELS)
        require_positive("model", hidden=self.hidden, dim=self.dim, depth=self.depth, heads=self.heads)
        if not self.channels or min(self.channels) <= 0:
            raise ValueError(f"model.channels must be positive numbers, got {list(self.channels)}")
        if self.dim % self.heads:
            raise ValueError(f"model.dim={self.dim} is not divisible by model.heads={self.heads}; change one of them")


def stage_layers(cfg: ModelConfig) -> int | None:
    """How many layers ``jobs.models`` builds for ``cfg`` as a flat sequence (pipeline cut points), or
    None for a model that is not one (mlp, resnet18)."""
    if cfg.name == "transformer":
        return cfg.depth + 2  # embedding, blocks, head
    if cfg.name == "cnn":
        return 3 * len(cfg.channels) + 3  # conv, relu, pool per block; pool, flatten, linear
    return None


@dataclasses.dataclass(frozen=True)
class DataConfig:
    name: str  # dataset: synthetic, mnist, cifar10 or fake (torchvision FakeData)
    root: str = "data"  # mnist/cifar10: folder holding torchvision's on-disk layout
    download: bool = False  # mnist/cifar10: fetch missing files from the internet (off: fail and say what is missing)
    verify_md5: bool = True  # cifar10: check torchvision's checksums (off for subsets or repacked copies)
    num_samples: int = 8192  # synthetic/fake: number of samples
    image_shape: tuple[int, ...] = (1, 28, 28)  # synthetic/fake: shape of one sample (channels, height, width)
    num_classes: int = 10  # synthetic/fake: number of labels
    noise: float = 15.0  # synthetic: noise around each class prototype, relative to it (higher is harder)
    seed: int = 1234  # synthetic/fake: seed of the data itself, separate from train.seed
    num_workers: int = 0  # DataLoader worker processes per rank

    def __post_init__(self) -> None:
        require_one_of("data", self.name, DATASETS)
        require_positive("data", num_samples=self.num_samples, num_classes=self.num_classes)
        if len(self.image_shape) != 3 or min(self.image_shape) <= 0:
            raise ValueError(f"data.image_shape must be [channels, height, width], got {list(self.image_shape)}")
        if self.noise < 0 or self.num_workers < 0:
            raise ValueError("data.noise and data.num_workers must not be negative")


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    name: str  # optimizer: sgd or adamw
    lr: float  # peak learning rate
    momentum: float = 0.0  # sgd: momentum factor
    weight_decay: float = 0.0  # L2 (sgd) or decoupled (adamw) weight decay
    betas: tuple[float, float] = (0.9, 0.999)  # adamw: moment decay rates
    schedule: str = "constant"  # learning-rate schedule after warm-up: constant or cosine (to 0 at train.steps)
    warmup_steps: int = 0  # optimizer steps of linear warm-up from 0 to lr

    def __post_init__(self) -> None:
        require_one_of("optim", self.name, OPTIMIZERS)
        require_one_of("optim.schedule", self.schedule, SCHEDULES)
        require_positive("optim", lr=self.lr)
        if self.warmup_steps < 0 or self.weight_decay < 0 or not 0 <= self.momentum < 1:
            raise ValueError("optim.warmup_steps and optim.weight_decay must be >= 0, optim.momentum in [0, 1)")


@dataclasses.dataclass(frozen=True)
class StrategyConfig:
    name: str  # how the model is spread over ranks: ddp, fsdp (FSDP2 shards), single, pipeline or hybrid (dp x pp)
    bucket_cap_mb: float = 25.0  # ddp/hybrid: gradient bucket size for the all-reduce
    pp: int = 1  # pipeline/hybrid: ranks per pipeline (keep it <= tasks per node: stages inside a node)
    microbatches: int = 1  # pipeline/hybrid: micro-batches per step and replica (>= stages)
    schedule: str = "1f1b"  # pipeline/hybrid: gpipe, 1f1b or interleaved (several stages per rank)
    stages_per_rank: int = 1  # pipeline/hybrid: stages each pipeline rank holds (interleaved: >= 2)
    replicate: str = "ddp"  # hybrid: how each stage is replicated over its dp peers: ddp or fsdp

    def __post_init__(self) -> None:
        require_one_of("strategy", self.name, STRATEGIES)
        require_one_of("strategy.schedule", self.schedule, SCHEDULES_PP)
        require_one_of("strategy.replicate", self.replicate, ("ddp", "fsdp"))
        require_positive("strategy", bucket_cap_mb=self.bucket_cap_mb, pp=self.pp, microbatches=self.microbatches,
                         stages_per_rank=self.stages_per_rank)
        if (self.schedule == "interleaved") != (self.stages_per_rank > 1):
            raise ValueError(f"strategy.schedule={self.schedule} with strategy.stages_per_rank={self.stages_per_rank}: "
                             "the interleaved schedule is the one for several stages per rank; "
                             "use schedule=interleaved with stages_per_rank>=2, or stages_per_rank=1 otherwise")

    @property
    def pipelined(self) -> bool:
        return self.name in ("pipeline", "hybrid")


@dataclasses.dataclass(frozen=True)
class ClusterConfig:
    name: str  # where ranks run: local (N processes here), debug (this process), inline (already started), slurm
    tasks_per_node: int = 1  # local: number of ranks to start (slurm: see SlurmResources)
    timeout_min: float = 60.0  # local: wall-clock limit of the run, in minutes
    wait: bool = False  # slurm: stay until the job ends and print its summary (default: return at once)
    dry_run: bool = False  # slurm: print the sbatch script and the rank layout, submit nothing
    signal_lead_s: int = 30  # local: seconds before timeout_min at which ranks get USR2 (rehearses a time limit)

    def __post_init__(self) -> None:
        require_one_of("cluster", self.name, CLUSTERS)
        require_positive("cluster", tasks_per_node=self.tasks_per_node, timeout_min=self.timeout_min)
        if self.signal_lead_s < 0:
            raise ValueError("cluster.signal_lead_s must not be negative; use 0 for a signal at the timeout itself")


@dataclasses.dataclass(frozen=True)
class DistributedConfig:
    backend: str = "auto"  # process-group backend: auto (nccl with a GPU, gloo otherwise), gloo or nccl
    timeout_s: float = 600.0  # how long a collective waits for the other ranks before failing

    def __post_init__(self) -> None:
        require_one_of("distributed.backend", self.backend, ("auto", "gloo", "nccl"))
        require_positive("distributed", timeout_s=self.timeout_s)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    steps: int  # optimizer steps in total (a resumed run continues up to this count)
    global_batch_size: int  # samples per optimizer step, summed over all data-parallel ranks
    seed: int = 0  # seed of model init and of the per-epoch shuffling
    log_every_steps: int = 20  # optimizer steps between two metrics records
    checkpoint_every_steps: int = 100  # optimizer steps between two checkpoints (one is also written at the end)
    keep_checkpoints: int = 3  # newest complete checkpoints kept on disk
    async_checkpoint: bool = True  # write checkpoints in the background while training goes on (one at a time)
    allow_changes: tuple[str, ...] = ()  # fingerprint keys a resume may change ([optim.lr, layout.world_size])

    def __post_init__(self) -> None:
        require_positive("train", steps=self.steps, global_batch_size=self.global_batch_size,
                  log_every_steps=self.log_every_steps, checkpoint_every_steps=self.checkpoint_every_steps,
                  keep_checkpoints=self.keep_checkpoints)


@dataclasses.dataclass(frozen=True)
class JobPlan:
    """Everything a rank needs, validated as a whole."""

    model: ModelConfig
    data: DataConfig
    optim: OptimConfig
    strategy: StrategyConfig
    cluster: ClusterConfig
    distributed: DistributedConfig
    train: TrainConfig
    requeue: RequeueBudget = RequeueBudget()  # how often the job may come back, per cause
    slurm: SlurmResources | None = None  # the job's resources when cluster=slurm

    @property
    def world_size(self) -> int | None:
        """Ranks the launcher will start; None for cluster=inline, whose ranks exist already."""
        if self.slurm is not None:
            return self.slurm.world_size
        return {"local": self.cluster.tasks_per_node, "debug": 1}.get(self.cluster.name)

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
        return ParallelDims(
            world_size=world_size, dp=max(1, world_size // pp), pp=pp,
            microbatches=strategy.microbatches if strategy.pipelined else 1,
            stages_per_rank=strategy.stages_per_rank if strategy.pipelined else 1,
            layers=stage_layers(self.model), global_batch_size=self.train.global_batch_size,
        )

    @property
    def stop_signal(self) -> str:
        """The warning signal the ranks listen for (besides SIGTERM)."""
        return self.slurm.signal if self.slurm is not None else "USR2"  # submitit's local controller sends USR2

    @property
    def signal_lead_s(self) -> float:
        """Seconds between the warning signal and the end of the allocation."""
        return self.slurm.signal_lead_s if self.slurm is not None else self.cluster.signal_lead_s

    def fingerprint(self, world_size: int) -> dict[str, Any]:
        """``fingerprint_config`` plus the parallel layout: what a checkpoint must match to be resumed."""
        return {**self.fingerprint_config(), "layout.world_size": world_size}

    def fingerprint_config(self) -> dict[str, Any]:
        """The settings a checkpoint must match to be resumed: what changes the numbers, flattened.

        train.steps and the log/checkpoint cadence may change between runs (to train longer), and so
        may where it runs; the number of ranks is part of ``fingerprint``.
        """
        relevant = {
            "model": dataclasses.asdict(self.model),
            "data": {k: v for k, v in dataclasses.asdict(self.data).items() if k not in ("root", "download", "num_workers")},
            "optim": dataclasses.asdict(self.optim),
            "strategy": {k: v for k, v in dataclasses.asdict(self.strategy).items() if k != "bucket_cap_mb"},
            "train": {"global_batch_size": self.train.global_batch_size, "seed": self.train.seed},
        }
        return _flatten(json.loads(json.dumps(relevant)))


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


_GROUPS = {
    "model": ModelConfig, "data": DataConfig, "optim": OptimConfig, "strategy": StrategyConfig,
    "cluster": ClusterConfig, "distributed": DistributedConfig, "train": TrainConfig, "requeue": RequeueBudget,
}


def plan_from_config(cfg: DictConfig) -> JobPlan:
    """Turn a composed Hydra config into a validated plan; unknown or missing keys are errors."""
    tree = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(tree, dict)
    return plan_from_tree(tree)


def plan_from_tree(tree: dict[str, Any]) -> JobPlan:
    """``plan_from_config`` of a config already made plain (``OmegaConf.to_container(cfg, resolve=True)``)."""
    parts: dict[str, Any] = {}
    for group, cls in _GROUPS.items():
        values = tree.get(group)
        if not isinstance(values, dict):
            raise ValueError(f"the config has no '{group}' section; select one with {group}=NAME")
        if group == "cluster" and values.get("name") == "slurm":
            launcher_keys = {"name", "wait", "dry_run"}
            parts["slurm"] = _build(SlurmResources, group, _slurm_values(
                {k: v for k, v in values.items() if k not in launcher_keys}))
            values = {k: v for k, v in values.items() if k in launcher_keys}
        parts[group] = _build(cls, group, values)
    return JobPlan(**parts)


def _slurm_values(values: dict[str, Any]) -> dict[str, Any]:
    """YAML's natural forms for the Slurm group: a mapping of extra flags, tasks following GPUs."""
    additional = values.get("additional") or {}
    if not isinstance(additional, dict):
        raise ValueError("cluster.additional must map sbatch flags to values, like {mail-type: END}")
    if values.get("tasks_per_node") is None:
        values = {**values, "tasks_per_node": values.get("gpus_per_node") or 1}
    return {**values, "additional": [[str(k), str(v)] for k, v in sorted(additional.items())]}


def _build(cls: type, group: str, values: dict[str, Any]) -> Any:
    """``cls(**values)`` after checking names and types, so errors name the config key."""
    known = {field.name: field for field in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ValueError(f"unknown setting {group}.{unknown[0]}; {group} takes: {', '.join(known)}")
    missing = sorted(name for name, f in known.items() if name not in values and f.default is dataclasses.MISSING)
    if missing:
        raise ValueError(f"{group}.{missing[0]} is not set; add {group}.{missing[0]}=VALUE")
    for name, value in values.items():
        _check_type(f"{group}.{name}", value, known[name].type)
    return cls(**{k: _tuples(v) for k, v in values.items()})


def _tuples(value: Any) -> Any:
    return tuple(_tuples(v) for v in value) if isinstance(value, list) else value


def _check_type(key: str, value: Any, expected: Any) -> None:
    """Hydra passes ``train.steps=ten`` through as a string: say so before it fails somewhere deep."""
    origin = getattr(expected, "__origin__", expected)
    if origin is tuple:
        item = getattr(expected, "__args__", (float,))[0]
        if item is str:
            ok, kind = isinstance(value, list) and all(isinstance(v, str) for v in value), "a list of strings"
        elif getattr(item, "__origin__", None) is tuple:
            ok, kind = isinstance(value, list), "a list of pairs"
        else:
            ok = isinstance(value, list) and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
            kind = "a list of numbers, like [1, 2]"
    elif expected is float:
        ok, kind = isinstance(value, (int, float)) and not isinstance(value, bool), "a number"
    elif expected is int:
        ok, kind = isinstance(value, int) and not isinstance(value, bool), "a whole number"
    else:
        ok, kind = isinstance(value, expected), expected.__name__
    if not ok:
        raise ValueError(f"{key} must be {kind}, got {value!r}; set {key}=<{kind}>")
