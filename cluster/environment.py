"""Where this process stands in a distributed job: one typed answer, read from one table.

Sources are tried in a fixed order (Slurm step, torchrun, submitit's local executor, a single
process), as in dinov2's ``distributed/__init__.py``. A source claims the process when its marker
variable is set; it then needs all of its variables, and a half-set environment raises with what
it saw instead of guessing. Nothing here writes ``os.environ``.
"""

import dataclasses
import hashlib
import os
from collections.abc import Callable, Mapping

from cluster.slurm.hostlist import expand_hostlist

# Ports derived from a job id land here: unprivileged, and below Linux's ephemeral range
# (32768-60999), so a derived port does not collide with an outgoing connection's.
PORT_RANGE = (20000, 32768)
# What ``python -m cluster run`` tells the command it starts, besides torchrun's variables: the run directory,
# and (JSON) the warning signal, its lead and the requeue budgets, for ``cluster.start`` to use.
RUN_DIR_VARIABLE = "CLUSTERJOBS_RUN_DIR"
SETTINGS_VARIABLE = "CLUSTERJOBS_SETTINGS"


@dataclasses.dataclass(frozen=True)
class TaskEnvironment:
    """This process's place in its job."""

    started_by: str  # which source described it: "slurm", "torchrun", "local" or "single"
    rank: int  # global rank, 0 .. world_size - 1
    local_rank: int  # rank among the tasks on this node
    world_size: int  # number of tasks in the job
    node_rank: int  # index of this node, 0 .. num_nodes - 1
    num_nodes: int  # number of nodes in the job
    master_addr: str  # host of rank 0, where the rendezvous store listens
    master_port: int  # port of that store
    job_id: str  # the launcher's job id ("" for a single process)
    restart_count: int  # how often the launcher restarted this job (requeues, elastic restarts)

    def __post_init__(self) -> None:
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} is outside world size {self.world_size}")
        if not 0 <= self.node_rank < self.num_nodes:
            raise ValueError(f"node rank {self.node_rank} is outside node count {self.num_nodes}")

    @property
    def is_main(self) -> bool:
        """Rank 0 writes the files that exist once per job (metrics, summary, checkpoint index)."""
        return self.rank == 0


class HalfSetEnvironmentError(RuntimeError):
    """The environment claims a launcher but lacks some of its variables."""


def derive_master_port(job_id: str) -> int:
    """A port every rank computes alike from the job id, without talking to each other."""
    digest = int.from_bytes(hashlib.sha256(job_id.encode()).digest()[:8], "big")
    low, high = PORT_RANGE
    return low + digest % (high - low)


@dataclasses.dataclass(frozen=True)
class _Source:
    name: str
    marker: str  # the variable whose presence means "this launcher started me"
    variables: dict[str, str]  # field -> variable, all required once the marker is set
    describe: Callable[[dict[str, str], Mapping[str, str]], TaskEnvironment]  # values -> answer
    declines_if: tuple[str, ...] = ()  # variables that hand the process to a later source


def _scheduled(v: dict[str, str], environ: Mapping[str, str], *, started_by: str, first_host: str,
               restarts_variable: str = "") -> TaskEnvironment:
    """A task of a scheduler that gives ranks but no rendezvous: rank 0's host and a port from the job id."""
    job_id = v["job_id"]
    return TaskEnvironment(
        started_by=started_by,
        rank=int(v["rank"]),
        local_rank=int(v["local_rank"]),
        world_size=int(v["world_size"]),
        node_rank=int(v["node_rank"]),
        num_nodes=int(v["num_nodes"]),
        master_addr=environ.get("MASTER_ADDR") or first_host,
        master_port=int(environ.get("MASTER_PORT") or derive_master_port(job_id)),
        job_id=job_id,
        restart_count=int(environ.get(restarts_variable, "0")),  # Slurm sets it from the first requeue on
    )


def _slurm(v: dict[str, str], environ: Mapping[str, str]) -> TaskEnvironment:
    return _scheduled(v, environ, started_by="slurm", first_host=expand_hostlist(v["nodelist"])[0],
                      restarts_variable="SLURM_RESTART_COUNT")


def _submitit_local(v: dict[str, str], environ: Mapping[str, str]) -> TaskEnvironment:
    return _scheduled(v, environ, started_by="local", first_host="127.0.0.1")


def _torchrun(v: dict[str, str], environ: Mapping[str, str]) -> TaskEnvironment:
    return TaskEnvironment(
        started_by="torchrun",
        rank=int(v["rank"]),
        local_rank=int(v["local_rank"]),
        world_size=int(v["world_size"]),
        node_rank=int(v["node_rank"]),
        num_nodes=int(v["num_nodes"]),
        master_addr=v["master_addr"],
        master_port=int(v["master_port"]),
        job_id=v["job_id"],
        restart_count=int(environ.get("TORCHELASTIC_RESTART_COUNT", "0")),
    )


# The table: order matters, the first source whose marker is set describes the process.
SOURCES: tuple[_Source, ...] = (
    _Source(
        name="slurm",
        # SLURM_STEP_ID exists only inside an srun step, not in the batch shell: the batch
        # shell of a 2-node job is one process, not rank 0 of 4.
        marker="SLURM_STEP_ID",
        variables={
            "job_id": "SLURM_JOB_ID",
            "rank": "SLURM_PROCID",
            "local_rank": "SLURM_LOCALID",
            "world_size": "SLURM_NTASKS",
            "node_rank": "SLURM_NODEID",
            "num_nodes": "SLURM_JOB_NUM_NODES",
            "nodelist": "SLURM_JOB_NODELIST",
        },
        # `srun torchrun ...`: torchrun owns the ranks of the processes it started.
        declines_if=("TORCHELASTIC_RUN_ID",),
        describe=_slurm,
    ),
    _Source(
        name="torchrun",
        marker="TORCHELASTIC_RUN_ID",
        variables={
            "job_id": "TORCHELASTIC_RUN_ID",
            "rank": "RANK",
            "local_rank": "LOCAL_RANK",
            "world_size": "WORLD_SIZE",
            "node_rank": "GROUP_RANK",
            "num_nodes": "GROUP_WORLD_SIZE",
            "master_addr": "MASTER_ADDR",
            "master_port": "MASTER_PORT",
        },
        describe=_torchrun,
    ),
    _Source(
        name="local",
        marker="SUBMITIT_LOCAL_JOB_ID",
        variables={
            "job_id": "SUBMITIT_LOCAL_JOB_ID",
            "rank": "SUBMITIT_LOCAL_GLOBALID",
            "local_rank": "SUBMITIT_LOCAL_LOCALID",
            "world_size": "SUBMITIT_LOCAL_NTASKS",
            "node_rank": "SUBMITIT_LOCAL_NODEID",
            "num_nodes": "SUBMITIT_LOCAL_JOB_NUM_NODES",
        },
        describe=_submitit_local,
    ),
)

def variables_for(source: str, env: TaskEnvironment) -> dict[str, str]:
    """The variables by which ``source`` (a name in ``SOURCES``) describes ``env``: what a launcher that stands
    in for it sets, so that ``detect_environment`` reads ``env`` back (its marker, the job id, included)."""
    table = next(s for s in SOURCES if s.name == source).variables
    return {variable: str(getattr(env, field)) for field, variable in table.items() if hasattr(env, field)}


SINGLE_PROCESS = TaskEnvironment(
    started_by="single", rank=0, local_rank=0, world_size=1, node_rank=0, num_nodes=1,
    master_addr="127.0.0.1", master_port=0, job_id="", restart_count=0,
)


def detect_environment(environ: Mapping[str, str] | None = None) -> TaskEnvironment:
    """Describe this process from its environment variables (``os.environ`` by default)."""
    environ = os.environ if environ is None else environ
    for source in SOURCES:
        if source.marker not in environ or any(name in environ for name in source.declines_if):
            continue
        missing = sorted(var for var in source.variables.values() if not environ.get(var))
        if missing:
            seen = sorted(var for var in source.variables.values() if environ.get(var))
            raise HalfSetEnvironmentError(
                f"{source.marker} is set, so this looks like a {source.name} task, but "
                f"{', '.join(missing)} {'is' if len(missing) == 1 else 'are'} missing "
                f"(set: {', '.join(seen) or 'none'}); start the task through {source.name}, "
                f"or unset {source.marker} to run as a single process"
            )
        values = {field: environ[var] for field, var in source.variables.items()}
        try:
            return source.describe(values, environ)
        except ValueError as error:
            raise HalfSetEnvironmentError(f"inconsistent {source.name} variables {values}: {error}") from error
    return SINGLE_PROCESS
