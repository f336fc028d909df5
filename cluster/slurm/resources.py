"""What one Slurm job asks for, validated: the settings every sbatch script and check is made from."""

import dataclasses
import re

from cluster.errors import SettingError, literal, require_one_of, require_positive

SIGNALS = ("USR1", "USR2", "TERM", "INT", "HUP", "QUIT", "ALRM")
# Slurm may send the --signal warning up to this many seconds before it is due (sbatch(1), --signal).
SIGNAL_EARLY_S = 60
_FLAG = re.compile(r"^[a-z][a-z0-9_-]*$")  # an sbatch long option's name
# sbatch options the fields above (and submitit) set: an additional flag may not set them another way.
# flag -> the field that sets it (None: set by the library itself: log files, arrays)
MANAGED: dict[str, str | None] = {
    "nodes": "nodes", "ntasks-per-node": "tasks_per_node", "ntasks": "tasks_per_node", "cpus-per-task": "cpus_per_task",
    "time": "timeout_min", "signal": "signal", "partition": "partition", "account": "account", "qos": "qos",
    "constraint": "constraint", "exclude": "exclude", "gpus-per-node": "gpus_per_node", "gpus": "gpus_per_node",
    "gres": "gpus_per_node", "mem": "mem_gb", "job-name": "job_name",
    "mincpus": "tasks_per_node", "output": None, "error": None, "open-mode": None, "array": None,
}


@dataclasses.dataclass(frozen=True)
class SlurmResources:
    """What one job asks Slurm for."""

    nodes: int = 1  # nodes of the job (the most it asks for when min_nodes is set)
    min_nodes: int = 0  # elastic: the job (and each requeue) may start on as few as these, whatever is free; 0: nodes
    tasks_per_node: int = 0  # ranks per node; 0: one per GPU (gpus_per_node), or 1 without GPUs
    gpus_per_node: int = 0  # GPUs per node (0: a CPU job, gloo)
    cpus_per_task: int = 1  # CPU cores per rank
    mem_gb: float = 0  # memory per node in GB (0: the partition's default)
    timeout_min: int = 60  # wall-clock limit in minutes
    partition: str = ""  # partition ("" : the cluster's default one)
    account: str = ""  # account to charge ("" : your default)
    qos: str = ""  # quality of service ("" : the default)
    constraint: str = ""  # node features required, Slurm syntax ("gpu80g&ib")
    exclude: str = ""  # nodes to avoid, a Slurm host list ("node[3-4]")
    job_name: str = "clusterjobs"  # name shown by squeue and sacct
    signal: str = "USR2"  # signal sent before the time limit and at preemption (USR1 may be NCCL's)
    signal_lead_s: int = 120  # seconds before the end at which the signal comes
    setup: tuple[str, ...] = ()  # shell lines run in the batch script before the ranks start
    additional: tuple[tuple[str, str], ...] = ()  # further sbatch options, (flag, value) pairs: (("mail-type", "END"),)

    def __post_init__(self) -> None:
        if self.tasks_per_node == 0:
            object.__setattr__(self, "tasks_per_node", self.gpus_per_node or 1)
        require_positive(nodes=self.nodes, tasks_per_node=self.tasks_per_node, cpus_per_task=self.cpus_per_task,
                         timeout_min=self.timeout_min)
        if self.gpus_per_node < 0 or self.mem_gb < 0 or self.signal_lead_s < 0:
            raise SettingError("{k.gpus_per_node}, {k.mem_gb} and {k.signal_lead_s} must not be negative; "
                               "use 0 for none")
        if not 0 <= self.min_nodes <= self.nodes:
            raise SettingError(f"{{k.min_nodes}}={self.min_nodes} must be between 0 (not elastic) and "
                               f"{{k.nodes}}={self.nodes}; the job starts on any node count in that range")
        require_one_of("signal", self.signal, SIGNALS)
        if self.timeout_min * 60 <= self.signal_lead_s:
            raise SettingError(
                f"{{k.timeout_min}}={self.timeout_min} ({self.timeout_min * 60} s) is not longer than the warning's "
                f"lead {{k.signal_lead_s}}={self.signal_lead_s}: every allocation would be told to stop as it starts, "
                f"and end in requeues; give {{k.timeout_min}} >= {self.signal_lead_s // 60 + 2} or a smaller "
                "{k.signal_lead_s}")
        texts = [self.partition, self.account, self.qos, self.constraint, self.exclude, self.job_name,
                 *self.setup, *(part for pair in self.additional for part in pair)]
        for text in texts:
            # A value is quoted on its #SBATCH line, but a line break would start a line of shell.
            if any(ord(char) < 32 or ord(char) == 127 for char in text):
                raise SettingError(f"Slurm setting {literal(repr(text))} holds a line break or control character; "
                                   "remove it")
        for flag, _ in self.additional:
            if not _FLAG.match(flag):
                raise SettingError(f"{{k.additional}} flag {literal(repr(flag))} is no sbatch option name "
                                   "(like 'mail-type')")
            if flag in MANAGED:
                field = MANAGED[flag]
                instead = f"set {{k.{field}}} instead" if field else "the library sets it (logs, arrays); remove it"
                raise SettingError(f"{{k.additional}} flag {literal(repr(flag))} would override what the checks and "
                                   f"the dry run show; {instead}")

    @property
    def world_size(self) -> int:
        """Ranks of the job at its full size (``nodes``)."""
        return self.nodes * self.tasks_per_node

    @property
    def elastic(self) -> bool:
        """Whether the job may start on fewer nodes than ``nodes`` (``min_nodes``)."""
        return 0 < self.min_nodes < self.nodes

    @property
    def world_sizes(self) -> list[int]:
        """Every number of ranks the job may start with, smallest first."""
        return [count * self.tasks_per_node for count in range(self.min_nodes or self.nodes, self.nodes + 1)]

    def timing_warning(self) -> str:
        """A template (``cluster.errors``) saying that the warning may come before any training, or ""."""
        before = self.timeout_min * 60 - self.signal_lead_s
        if before >= SIGNAL_EARLY_S:
            return ""
        return (f"the warning is due {before} s into each allocation ({{k.timeout_min}}={self.timeout_min}, "
                f"{{k.signal_lead_s}}={self.signal_lead_s}), and Slurm may send it up to {SIGNAL_EARLY_S} s early: "
                "an allocation may train only a step before it is requeued")

