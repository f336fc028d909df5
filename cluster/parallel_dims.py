"""How a job's ranks are split between data parallelism (dp) and pipeline stages (pp), validated whole.

Ranks are laid out pp-fastest: the pp ranks of one replica are consecutive, so with ``pp`` equal to
the tasks per node a pipeline stays inside a node and its replicas span nodes, as the seed articles
recommend (model parallel inside a machine, data parallel across machines). Like torchtitan's
``parallel_dims.py``, one error names every factor that does not fit (as ``{k.NAME}`` settings,
``cluster.errors``: ``pp``, ``microbatches``, ``stages_per_rank``, ``global_batch_size``, ``micro_batch_size``,
``model``, ``depth``).
"""

import dataclasses

from cluster.errors import SettingError


@dataclasses.dataclass(frozen=True)
class ParallelDims:
    """The split of ``world_size`` ranks into ``dp`` replicas of a ``pp``-rank pipeline."""

    world_size: int  # ranks in the job (nodes x tasks_per_node)
    dp: int  # data-parallel replicas
    pp: int = 1  # pipeline ranks per replica
    microbatches: int = 1  # micro-batches each replica splits its batch into (pipelines)
    stages_per_rank: int = 1  # model stages each pipeline rank holds (interleaved schedules: >= 2)
    layers: int | None = None  # layers the model can be cut at (None: a model that cannot be cut)
    cut_by_name: bool = False  # the model is cut at named modules: exactly ``layers`` stages (``split_points``)
    counted_later: bool = False  # the layers are counted once the model is built (the ranks check again)
    global_batch_size: int = 0  # samples per optimizer step over all replicas (0: not checked)
    micro_batch_size: int = 0  # samples per forward/backward on a rank (pipelines: per micro-batch); 0: all at once

    def __post_init__(self) -> None:
        problems = []
        if min(self.world_size, self.dp, self.pp, self.microbatches, self.stages_per_rank) < 1:
            problems.append("world size, dp, {k.pp}, {k.microbatches} and {k.stages_per_rank} must be positive")
        elif self.dp * self.pp != self.world_size:
            problems.append(f"dp x pp = {self.dp} x {self.pp} = {self.dp * self.pp}, but the job has "
                            f"{self.world_size} ranks; choose a {{k.pp}} that divides {self.world_size}")
        if self.pp > 1 or self.stages_per_rank > 1:
            if self.layers is None:
                if not self.counted_later:
                    problems.append("the model cannot be cut into pipeline stages; give one that can ({k.model})")
            elif self.cut_by_name and self.layers != self.stages:
                problems.append(f"{{k.split_points}} make {self.layers} stages, but pp x stages_per_rank = "
                                f"{self.pp} x {self.stages_per_rank} = {self.stages}; give {self.stages - 1} split "
                                "point(s), or change {k.pp}")
            elif self.layers < self.stages:
                problems.append(f"the model has {self.layers} layers, fewer than pp x stages_per_rank = "
                                f"{self.pp} x {self.stages_per_rank} = {self.stages} stages; lower {{k.pp}} "
                                "or {k.stages_per_rank}, or deepen the model ({k.depth})")
            if self.microbatches < self.stages:
                problems.append(f"{{k.microbatches}}={self.microbatches} is fewer than the {self.stages} stages, "
                                f"so stages would sit idle; use at least {self.stages}")
        if self.global_batch_size and self.dp >= 1 and self.microbatches >= 1:
            unit = self.dp * self.microbatches
            if self.global_batch_size % unit:
                parts = (f"the {self.dp} data-parallel replicas" if self.microbatches == 1 else
                         f"dp x microbatches = {self.dp} x {self.microbatches} = {unit}")
                problems.append(f"{{k.global_batch_size}}={self.global_batch_size} is not divisible by {parts}; "
                                f"use a multiple of {unit}")
        if self.micro_batch_size and self.global_batch_size and not problems:
            share = self.global_batch_size // self.dp  # each replica's samples per step
            unit = self.micro_batch_size * self.microbatches
            if share % unit:
                what = (f"{{k.micro_batch_size}}={self.micro_batch_size}" if self.microbatches == 1 else
                        f"{{k.micro_batch_size}} x {{k.microbatches}} = {self.micro_batch_size} x {self.microbatches}")
                problems.append(f"{{k.global_batch_size}}={self.global_batch_size} over {self.dp} data-parallel "
                                f"replica(s) is {share} samples each, which {what} does not divide; use a "
                                f"{{k.micro_batch_size}} that divides {share // self.microbatches}")
        if problems:
            raise SettingError("the parallel plan does not fit: " + "; ".join(problems))

    @property
    def replica_batch_size(self) -> int:
        """Samples each replica takes per optimizer step."""
        return self.global_batch_size // self.dp

    @property
    def forward_batch_size(self) -> int:
        """Samples in one forward/backward: a micro-batch (``micro_batch_size``), else the replica's batch (split
        into ``microbatches`` in a pipeline)."""
        return self.micro_batch_size or self.replica_batch_size // self.microbatches

    @property
    def accumulation(self) -> int:
        """Forward/backward passes (a pipeline's: schedule runs) whose gradients one optimizer step sums."""
        return self.replica_batch_size // (self.forward_batch_size * self.microbatches)

    @property
    def stages(self) -> int:
        return self.pp * self.stages_per_rank

    def coordinates(self, rank: int) -> tuple[int, int]:
        """``(dp index, pp index)`` of ``rank``."""
        return divmod(rank, self.pp)

    def stages_of(self, pp_index: int) -> list[int]:
        """The stages a pipeline rank holds: stage s lives on pp rank s % pp (looped, as interleaved schedules
        expect)."""
        return [pp_index + round_ * self.pp for round_ in range(self.stages_per_rank)]

    def stage_owner(self, stage: int) -> int:
        """The pipeline rank (pp index) that holds ``stage``: the inverse of ``stages_of``."""
        return stage % self.pp

    def dp_peers(self, rank: int) -> list[int]:
        """The ranks holding the same stages as ``rank`` (its replicas)."""
        _, pp_index = self.coordinates(rank)
        return [replica * self.pp + pp_index for replica in range(self.dp)]

    def layers_of(self, stage: int) -> range:
        """The layer indices stage ``stage`` holds: contiguous, near-equal groups, the first ones one larger (with
        split points, layer i is stage i)."""
        assert self.layers is not None
        base, extra = divmod(self.layers, self.stages)
        start = stage * base + min(stage, extra)
        return range(start, start + base + (1 if stage < extra else 0))
