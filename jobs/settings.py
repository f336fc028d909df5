"""Every setting of the built-in trainer: its default and its one-line doc, in one place.

Each dataclass is the schema of one config group (``model``, ``data``, ...), registered with Hydra's
ConfigStore, so OmegaConf checks types as a config is composed; ``conf/*.yaml`` only choose options
and override values. ``__post_init__`` checks what types cannot say, with the config key and the fix.
"""

import contextlib
import dataclasses
import sys
from collections.abc import Iterator
from typing import Any

from omegaconf import MISSING, DictConfig, OmegaConf

from cluster.errors import SettingError, require_one_of, require_positive
from cluster.requeue import HANG_TIMEOUT_S, RequeueBudget
from cluster.slurm.resources import SlurmResources

STRATEGIES = ("ddp", "fsdp", "single", "pipeline", "hybrid")
SCHEDULES_PP = ("gpipe", "1f1b", "interleaved")
OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("constant", "cosine")
CLUSTERS = ("local", "debug", "inline", "slurm")
PRECISIONS = ("fp32", "bf16", "fp16")


@contextlib.contextmanager
def config_keys(group: str) -> Iterator[None]:
    """The library's checks (``cluster.errors``) name settings by field; here they are ``group.field``."""
    try:
        yield
    except SettingError as error:
        raise ValueError(error.phrase(lambda name: f"{group}.{name}")) from None


def _tuples(obj: Any, *names: str) -> None:
    """Sequences come from the config as lists: make them the tuples the fields are."""
    for name in names:
        setattr(obj, name, tuple(getattr(obj, name)))


@dataclasses.dataclass
class OptimConfig:
    name: str = MISSING  # optimizer: sgd or adamw
    lr: float = MISSING  # peak learning rate
    momentum: float = 0.0  # sgd: momentum factor
    weight_decay: float = 0.0  # L2 (sgd) or decoupled (adamw) weight decay
    betas: tuple[float, float] = (0.9, 0.999)  # adamw: moment decay rates
    schedule: str = "constant"  # learning-rate schedule after warm-up: constant or cosine (to 0 at train.steps)
    warmup_steps: int = 0  # optimizer steps of linear warm-up from 0 to lr

    def __post_init__(self) -> None:
        _tuples(self, "betas")
        with config_keys("optim"):
            require_one_of("name", self.name, OPTIMIZERS)
            require_one_of("schedule", self.schedule, SCHEDULES)
            require_positive(lr=self.lr)
        if self.warmup_steps < 0 or self.weight_decay < 0 or not 0 <= self.momentum < 1:
            raise ValueError("optim.warmup_steps and optim.weight_decay must be >= 0, optim.momentum in [0, 1)")


@dataclasses.dataclass
class StrategyConfig:
    name: str = MISSING  # how the model is spread over ranks: ddp, fsdp (FSDP2 shards), single, pipeline or hybrid
    bucket_cap_mb: float = 25.0  # ddp/hybrid: gradient bucket size for the all-reduce, in MB
    pp: int = 1  # pipeline/hybrid: ranks per pipeline (keep it <= tasks per node: stages inside a node)
    microbatches: int = 1  # pipeline/hybrid: micro-batches per step and replica (>= stages)
    schedule: str = "1f1b"  # pipeline/hybrid: gpipe, 1f1b or interleaved (several stages per rank)
    stages_per_rank: int = 1  # pipeline/hybrid: stages each pipeline rank holds (interleaved: >= 2)
    replicate: str = "ddp"  # hybrid: how each stage is replicated over its dp peers: ddp or fsdp
    split_points: tuple[str, ...] = ()  # pipeline/hybrid: modules that begin stages ([blocks.4]); none: a Sequential
    fsdp_units: tuple[str, ...] = ()  # fsdp: classes sharded one by one ([Block]); none: ModuleList members or children
    activation_checkpointing: bool = False  # recompute each block's activations in backward: less memory, more time

    def __post_init__(self) -> None:
        _tuples(self, "split_points", "fsdp_units")
        with config_keys("strategy"):
            require_one_of("name", self.name, STRATEGIES)
            require_one_of("schedule", self.schedule, SCHEDULES_PP)
            require_one_of("replicate", self.replicate, ("ddp", "fsdp"))
            require_positive(bucket_cap_mb=self.bucket_cap_mb, pp=self.pp, microbatches=self.microbatches,
                             stages_per_rank=self.stages_per_rank)
        if self.split_points and self.fsdp_units and self.name == "hybrid" and self.replicate == "fsdp":
            raise ValueError("strategy.fsdp_units with strategy.split_points: each traced stage is one FSDP unit (its "
                             "graph reads the parameters of its modules directly); drop strategy.fsdp_units")
        if (self.schedule == "interleaved") != (self.stages_per_rank > 1):
            raise ValueError(f"strategy.schedule={self.schedule} with strategy.stages_per_rank={self.stages_per_rank}: "
                             "the interleaved schedule is the one for several stages per rank; "
                             "use schedule=interleaved with stages_per_rank>=2, or stages_per_rank=1 otherwise")

    @property
    def pipelined(self) -> bool:
        return self.name in ("pipeline", "hybrid")


@dataclasses.dataclass
class ClusterConfig:
    name: str = MISSING  # where ranks run: local (N processes here), debug (this process), inline (already started)
    tasks_per_node: int = 1  # local: ranks to start (0: one per visible GPU, or 2 without GPUs; cluster.devices)
    timeout_min: float = 60.0  # local: wall-clock limit of the run, in minutes
    wait: bool = False  # slurm only (see SlurmCluster)
    dry_run: bool = False  # slurm only (see SlurmCluster)
    health_check: bool = False  # slurm only (see SlurmCluster)
    signal_lead_s: int = 30  # local: seconds before timeout_min at which ranks get USR2 (rehearses a time limit)

    def __post_init__(self) -> None:
        with config_keys("cluster"):
            require_one_of("name", self.name, CLUSTERS)
            require_positive(timeout_min=self.timeout_min)
        if self.tasks_per_node < 0:
            raise ValueError("cluster.tasks_per_node must not be negative; use 0 for one rank per visible GPU")
        if self.signal_lead_s < 0:
            raise ValueError("cluster.signal_lead_s must not be negative; use 0 for a signal at the timeout itself")


@dataclasses.dataclass(frozen=True)
class SlurmCluster(SlurmResources):
    """``cluster=slurm``: the job's resources (``SlurmResources``, whose fields and docs these are) and how the
    command behaves; ``plan_from_config`` makes the resources from it."""

    name: str = "slurm"  # where ranks run: one Slurm job, every task a rank
    additional: dict[str, str] = dataclasses.field(default_factory=dict)  # type: ignore[assignment]  # further sbatch options ({mail-type: END})
    wait: bool = False  # stay until the job ends and print its summary (default: return at once)
    dry_run: bool = False  # print the sbatch script and the rank layout, submit nothing
    health_check: bool = False  # check every node before training; keep a failing or far slower one out, requeue

    def __post_init__(self) -> None:
        pass  # checked as the SlurmResources made from it (jobs.plan)

    def resources(self) -> SlurmResources:
        values = {field.name: getattr(self, field.name) for field in dataclasses.fields(SlurmResources)}
        with config_keys("cluster"):
            return SlurmResources(**{**values, "setup": tuple(self.setup),
                                     "additional": tuple(sorted(self.additional.items()))})


@dataclasses.dataclass
class DistributedConfig:
    backend: str = "auto"  # process-group backend: auto (nccl with a GPU, gloo otherwise), gloo or nccl
    timeout_s: float = 600.0  # how long a collective waits for the other ranks before failing
    hang_timeout_s: float = HANG_TIMEOUT_S  # a rank silent (or no step ending) this long ends the job, naming it

    def __post_init__(self) -> None:
        with config_keys("distributed"):
            require_one_of("backend", self.backend, ("auto", "gloo", "nccl"))
            require_positive(timeout_s=self.timeout_s, hang_timeout_s=self.hang_timeout_s)


@dataclasses.dataclass
class TrainConfig:
    steps: int = 400  # optimizer steps in total (a resumed run continues up to this count)
    global_batch_size: int = 128  # samples per optimizer step, summed over all data-parallel ranks
    micro_batch_size: int = 0  # per-rank samples per forward/backward, accumulated into a step (0: all, at full size)
    seed: int = 0  # seed of model init and of the per-epoch shuffling
    log_every_steps: int = 20  # optimizer steps between two metrics records
    checkpoint_every_min: float = 30.0  # minutes between two checkpoints (0: not by time); also at the end, on warning
    checkpoint_every_steps: int = 0  # optimizer steps between two checkpoints (0: not by steps)
    keep_checkpoints: int = 3  # newest complete checkpoints kept on disk
    async_checkpoint: bool = True  # write checkpoints in the background while training goes on (one at a time)
    allow_changes: tuple[str, ...] = ()  # fingerprint keys a resume may change ([optim.lr, layout.world_size])
    num_workers: int = 0  # DataLoader worker processes per rank (augmentation is seeded per sample: exact either way)
    precision: str = "fp32"  # fp32, bf16 or fp16 (with loss scaling) for forward and backward; weights stay fp32
    grad_clip_norm: float = 0.0  # clip the gradient to this global L2 norm (0: no clipping); logged as grad_norm
    eval_every_steps: int = 0  # optimizer steps between two evaluations on the validation split (0: at the end only)
    compile: bool = False  # torch.compile each block of the model (the first steps compile: slower; then faster)
    compile_backend: str = "inductor"  # torch.compile's backend (aot_eager: the same numbers as eager, to debug)

    def __post_init__(self) -> None:
        _tuples(self, "allow_changes")
        with config_keys("train"):
            require_one_of("precision", self.precision, PRECISIONS)
            if self.grad_clip_norm < 0:
                raise SettingError("{k.grad_clip_norm} must not be negative; 0 turns clipping off")
            if self.num_workers < 0 or self.micro_batch_size < 0:
                raise SettingError("{k.num_workers} and {k.micro_batch_size} must not be negative")
            require_positive(steps=self.steps, global_batch_size=self.global_batch_size,
                             log_every_steps=self.log_every_steps, keep_checkpoints=self.keep_checkpoints)
            if self.eval_every_steps < 0:
                raise SettingError("{k.eval_every_steps} must not be negative; 0 evaluates at the end only")
            if self.checkpoint_every_steps < 0 or self.checkpoint_every_min < 0:
                raise SettingError("{k.checkpoint_every_steps} and {k.checkpoint_every_min} must not be negative; "
                                   "0 turns that cadence off")


@dataclasses.dataclass(frozen=True)
class DataSplit:
    """The trainer's own key in the ``data`` group (not passed to ``data._target_``): where validation data comes
    from. A dataset with its own split (a target that takes ``split``: MNIST's and CIFAR-10's test sets) needs none.
    """

    val_fraction: float = 0.0  # share of the dataset held out for validation, the same samples whatever the seed

    def __post_init__(self) -> None:
        # The data group is untyped (its other keys are the target's): the number is checked here.
        if isinstance(self.val_fraction, bool) or not isinstance(self.val_fraction, (int, float)):
            raise ValueError(f"data.val_fraction={self.val_fraction!r} is not a number; hold out a share such as 0.1")
        object.__setattr__(self, "val_fraction", float(self.val_fraction))
        if not 0 <= self.val_fraction < 1:
            raise ValueError(f"data.val_fraction={self.val_fraction} is not in [0, 1); hold out a share such as 0.1 "
                             "(0: none)")


@dataclasses.dataclass(frozen=True)
class Requeue(RequeueBudget):
    """``requeue.*``: how often a stopped or failed job comes back, per cause (fields: ``RequeueBudget``)."""

    def __post_init__(self) -> None:
        with config_keys("requeue"):
            super().__post_init__()


@dataclasses.dataclass
class TrainJobConfig:
    """The whole config of ``python -m jobs.train``: one field per group (``cluster``'s schema is its option's).

    ``model``, ``data`` and ``loss`` name code: ``_target_`` and its keyword arguments (``jobs.targets``).
    """

    model: dict[str, Any] = dataclasses.field(default_factory=dict)
    data: dict[str, Any] = dataclasses.field(default_factory=dict)
    loss: dict[str, Any] = dataclasses.field(default_factory=dict)
    optim: OptimConfig = MISSING
    strategy: StrategyConfig = MISSING
    cluster: Any = MISSING
    distributed: DistributedConfig = dataclasses.field(default_factory=DistributedConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    requeue: Requeue = dataclasses.field(default_factory=Requeue)


@dataclasses.dataclass
class SweepSettings:
    """The sweep launcher's settings (``hydra.launcher.*``, for ``-m``)."""

    array_parallelism: int = 64  # array tasks of one sweep running at once (Slurm's %N)
    max_array_size: int = 0  # tasks per array at most (the cluster's MaxArraySize always holds); 0: that limit
    local_parallelism: int = 1  # cluster=local members running at once; they share this machine's CPUs
    wait: bool = False  # stay until every member has ended (default: return once submitted)
    # For many short members: one wait in the queue and one start (imports, process group) for N of them. Each keeps
    # its own run directory, requeues and exact resume; the allocation asks for pack x cluster.timeout_min.
    pack: int = 1  # members with the same resources run this many to an allocation, one after another (Slurm)

    def __post_init__(self) -> None:
        if self.array_parallelism < 1 or self.local_parallelism < 1 or self.max_array_size < 0 or self.pack < 1:
            raise ValueError("hydra.launcher.array_parallelism, hydra.launcher.local_parallelism and "
                             "hydra.launcher.pack must be >= 1, hydra.launcher.max_array_size >= 0 (0: the "
                             "cluster's MaxArraySize)")


def schema(cls: type) -> DictConfig:
    """``cls`` as a schema that config files may fill in: OmegaConf makes the nodes of a frozen dataclass
    (the library's ``SlurmResources`` and ``RequeueBudget``, which ours extend) read-only, and no YAML could
    set them."""
    node = OmegaConf.structured(cls)
    nodes = [node]
    while nodes:
        current = nodes.pop()
        OmegaConf.set_readonly(current, None)  # inherit: writable
        nodes.extend(current[key] for key in current
                     if not OmegaConf.is_missing(current, key) and isinstance(current[key], DictConfig))
    for code in ("model", "data", "loss"):  # keyword arguments of the user's code: any key, without a "+"
        if code in node:
            OmegaConf.set_struct(node[code], False)
    return node


def register() -> None:
    """Put the schemas where ``conf/`` finds them: ``train_job`` (named first in ``conf/train.yaml``'s defaults)
    and ``schema/cluster/{local,slurm}`` (named by ``conf/cluster/*.yaml``)."""
    from hydra.core.config_store import ConfigStore

    store = ConfigStore.instance()
    store.store(name="train_job", node=schema(TrainJobConfig), provider="clusterjobs")
    store.store(group="schema/cluster", name="local", node=schema(ClusterConfig), provider="clusterjobs")
    store.store(group="schema/cluster", name="slurm", node=schema(SlurmCluster), provider="clusterjobs")


# Where Hydra composes configs (python -m jobs.train, a sweep, the tests' compose()), it is imported before this
# module, and the schemas are registered as this module loads. A rank only reads the plan: it never imports
# Hydra, 0.2 s of CPU at every start.
if "hydra" in sys.modules:
    register()
