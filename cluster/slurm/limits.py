"""Check a job against the live cluster's limits before ``sbatch`` runs.

``scontrol`` answers in ``Key=Value`` lines (``-o``: one record per line); the parsers here are pure
and tested on captured output, ``check_against_cluster`` is the one entry that asks the live cluster.
"""

import dataclasses
import re

from cluster.errors import SettingError, literal
from cluster.slurm.commands import scontrol
from cluster.slurm.hostlist import expand_hostlist
from cluster.slurm.resources import SlurmResources

UNLIMITED = None


@dataclasses.dataclass(frozen=True)
class Partition:
    name: str
    default: bool
    state: str  # UP, DOWN, DRAIN, INACTIVE
    total_nodes: int
    max_nodes: int | None  # None: unlimited
    max_time_min: int | None  # None: unlimited
    nodes: tuple[str, ...]


def parse_record(line: str) -> dict[str, str]:
    """One ``scontrol show ... -o`` record as a dict; a value with spaces (``OS=Linux 6.1 ...``) is cut
    at its first space, which none of the keys read here has."""
    return dict(re.findall(r"(\S+?)=(\S*)", line))


def parse_slurm_minutes(text: str) -> int | None:
    """Slurm's time formats (``MM``, ``MM:SS``, ``HH:MM:SS``, ``D-HH[:MM[:SS]]``) in whole minutes."""
    if text in ("UNLIMITED", "INFINITE", "NONE"):
        return UNLIMITED
    days, _, clock = text.rpartition("-")
    parts = [int(p) for p in clock.split(":")]
    if days:
        hours, minutes, seconds = (parts + [0, 0])[:3]
    elif len(parts) == 3:
        hours, minutes, seconds = parts
    else:
        hours, (minutes, seconds) = 0, (parts + [0])[:2]
    total_s = ((int(days or 0) * 24 + hours) * 60 + minutes) * 60 + seconds
    return total_s // 60


def parse_partitions(output: str) -> list[Partition]:
    partitions = []
    for line in output.splitlines():
        record = parse_record(line)
        if "PartitionName" not in record:
            continue
        max_nodes = record.get("MaxNodes", "UNLIMITED")
        partitions.append(Partition(
            name=record["PartitionName"],
            default=record.get("Default") == "YES",
            state=record.get("State", "UP"),
            total_nodes=int(record.get("TotalNodes", "0")),
            max_nodes=None if max_nodes == "UNLIMITED" else int(max_nodes),
            max_time_min=parse_slurm_minutes(record.get("MaxTime", "UNLIMITED")),
            nodes=tuple(expand_hostlist(record["Nodes"])) if record.get("Nodes", "(null)") != "(null)" else (),
        ))
    return partitions


@dataclasses.dataclass(frozen=True)
class Node:
    cpus: int  # CPUs that jobs may use
    gpus: int  # GPUs in its generic resources
    features: tuple[str, ...] = ()  # what a constraint may ask for (AvailableFeatures)


def parse_nodes(output: str) -> dict[str, Node]:
    """Node name -> what it offers, from ``scontrol show node -o``."""
    nodes = {}
    for line in output.splitlines():
        record = parse_record(line)
        if "NodeName" in record:
            # Gres=gpu:8 or gpu:h100:8(S:0-1), several joined by commas; (null) when none
            gpus = sum(int(m) for m in re.findall(r"gpu(?::[^:,(]+)?:(\d+)", record.get("Gres", "")))
            features = record.get("AvailableFeatures", "(null)")
            nodes[record["NodeName"]] = Node(cpus=int(record.get("CPUEfctv", record.get("CPUTot", "0"))), gpus=gpus,
                                             features=() if features == "(null)" else tuple(features.split(",")))
    return nodes


def check_fits(resources: SlurmResources, partitions: list[Partition], nodes: dict[str, Node]) -> Partition:
    """The partition the job goes to, or a SettingError naming the limit and the fix."""
    if resources.partition:
        chosen = next((p for p in partitions if p.name == resources.partition), None)
        if chosen is None:
            names = ", ".join(p.name for p in partitions) or "none"
            raise SettingError(f"partition {literal(repr(resources.partition))} does not exist (partitions: "
                               f"{literal(names)}); set {{k.partition}}=NAME")
    else:
        chosen = next((p for p in partitions if p.default), None)
        if chosen is None:
            raise SettingError("the cluster has no default partition; set {k.partition}=NAME")
    if chosen.state != "UP":
        raise SettingError(f"partition {literal(chosen.name)} is {chosen.state}; "
                           "choose another with {k.partition}=NAME")
    node_limit = min(n for n in (chosen.total_nodes, chosen.max_nodes) if n is not None)
    if resources.nodes > node_limit:
        raise SettingError(f"{{k.nodes}}={resources.nodes} exceeds partition {literal(chosen.name)}'s {node_limit} "
                           f"nodes; ask for at most {node_limit}")
    if chosen.max_time_min is not None and resources.timeout_min > chosen.max_time_min:
        raise SettingError(f"{{k.timeout_min}}={resources.timeout_min} exceeds partition {literal(chosen.name)}'s "
                           f"MaxTime of {chosen.max_time_min} min; lower it, or pick a partition that allows it")
    offered = [nodes[name] for name in chosen.nodes if name in nodes]
    if resources.exclude:
        unknown = [name for name in expand_hostlist(resources.exclude) if name not in nodes]
        if unknown:
            raise SettingError(f"{{k.exclude}} names no node of this cluster: {literal(', '.join(unknown))} (nodes: "
                               f"{literal(', '.join(sorted(nodes)))}); fix {{k.exclude}}")
    if resources.constraint:
        features = {feature for node in offered for feature in node.features}
        asked = set(re.findall(r"[A-Za-z_][\w.-]*", re.sub(r"\*\d+", "", resources.constraint)))
        if asked - features:
            raise SettingError(f"{{k.constraint}} asks for {literal(', '.join(sorted(asked - features)))}, which no "
                               f"node of partition {literal(chosen.name)} has (features: "
                               f"{literal(', '.join(sorted(features)) or 'none')}); fix {{k.constraint}}")
    wanted = resources.tasks_per_node * resources.cpus_per_task
    fitting = [n for n in offered if n.cpus >= wanted]
    if offered and len(fitting) < resources.nodes:
        raise SettingError(f"{{k.tasks_per_node}} x {{k.cpus_per_task}} = {wanted} CPUs per node, but only "
                           f"{len(fitting)} of partition {literal(chosen.name)}'s nodes have that many "
                           f"(largest: {max(n.cpus for n in offered)}); use fewer tasks or CPUs per node")
    with_gpus = [n for n in offered if n.gpus >= resources.gpus_per_node]
    if offered and len(with_gpus) < resources.nodes:
        raise SettingError(f"{{k.gpus_per_node}}={resources.gpus_per_node}, but only {len(with_gpus)} of partition "
                           f"{literal(chosen.name)}'s nodes have that many GPUs "
                           f"(most: {max(n.gpus for n in offered)}); "
                           "pick a GPU partition with {k.partition}=NAME, or {k.gpus_per_node}=0")
    return chosen


def check_against_cluster(resources: SlurmResources) -> Partition:
    """Check ``resources`` against the live cluster; returns the partition the job goes to."""
    return check_fits(resources, parse_partitions(scontrol("show", "partition", "-o")),
                      parse_nodes(scontrol("show", "node", "-o")))
