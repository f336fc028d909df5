"""Nodes kept out of a job's next runs: those its failures implicated (a rank that hung or died there, a node Slurm
lost), remembered in the run's ``events.jsonl`` and, for a member of a sweep, in the sweep directory's one too, so
that every member stays off them. Torch-free: ``status`` reads them on the login node.

A node is excluded through the job's ``ExcNodeList`` at each requeue (``cluster.slurm.commands.requeue``). Never so
many that the job no longer fits its partition: then the job ends and says so (``check_fit``).
"""

import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from cluster.errors import ClusterError, literal
from cluster.rundir import EventLog, read_events
from cluster.slurm import commands
from cluster.slurm.hostlist import expand_hostlist

EVENT = "excluded"
# An exception whose text says the hardware of this node failed, rather than the code (NVIDIA's Xid errors,
# ECC faults, a GPU that fell off the bus or is held by another process).
NODE_FAULTS = re.compile(r"uncorrectable ECC|\bXid\b|fallen off the bus|CUDA-capable device\(s\) is/are busy or "
                         r"unavailable|NVLink error|unhandled system error", re.IGNORECASE)


class NoNodesLeftError(ClusterError, RuntimeError):
    """The job's partition has too few nodes left once the bad ones are kept out."""


def sweep_of(run_dir: Path) -> Path | None:
    """The sweep directory ``run_dir`` is a member of, if any (it holds the manifest)."""
    from cluster.sweep.manifest import MANIFEST  # late: the sweep package is bigger than this module needs

    return run_dir.parent if (run_dir.parent / MANIFEST).is_file() else None


def remembered(run_dir: Path) -> set[str]:
    """Every node excluded so far by this run, or by any member of its sweep."""
    folders = [run_dir] + ([sweep] if (sweep := sweep_of(run_dir)) is not None else [])
    return {node for folder in folders for event in read_events(folder) if event.get("event") == EVENT
            for node in event.get("nodes", [])}


def remember(run_dir: Path, log: EventLog, nodes: Iterable[str], *, reason: str) -> None:
    """Record ``nodes`` as bad in the run's events (``log``) and, for a sweep member, in the sweep's."""
    nodes = sorted(set(nodes))
    log.record(EVENT, nodes=nodes, reason=reason)
    if (sweep := sweep_of(run_dir)) is not None:
        EventLog(sweep, rank=log.rank, job=log.job, restart=log.restart).record(
            EVENT, nodes=nodes, reason=reason, member=run_dir.name)


def check_fit(bad: Iterable[str], *, partition: str, partition_nodes: Sequence[str], needed: int) -> None:
    """Refuse when fewer than ``needed`` of the partition's nodes are left once ``bad`` ones are kept out."""
    bad = set(bad)
    left = [node for node in partition_nodes if node not in bad]
    if partition_nodes and len(left) < needed:
        raise NoNodesLeftError(
            f"the job needs {needed} node(s), and only {len(left)} of partition {literal(partition)}'s "
            f"{len(partition_nodes)} are left once the nodes it found bad ({literal(','.join(sorted(bad)))}) are "
            "kept out; have them repaired, or run again with {k.exclude_bad_nodes}=false")


def fewest_nodes(num_nodes: str) -> int:
    """The smallest node count of ``scontrol``'s NumNodes (``2``, ``2-4``, ``2-4:...``)."""
    found = re.match(r"(\d+)", num_nodes or "")
    return int(found.group(1)) if found else 1


def excluded_by_user(exc_node_list: str) -> set[str]:
    """The nodes the job's own ``--exclude`` named (``scontrol``'s ExcNodeList; ``(null)``: none)."""
    return set(expand_hostlist(exc_node_list)) if exc_node_list and exc_node_list != "(null)" else set()


def lost_by_slurm(history: Sequence[Mapping[str, Any]], *, job: str, restart: int) -> dict[str, str]:
    """The nodes of the previous run of ``job`` that Slurm has since lost (down, not responding), with their
    state: bad nodes too, even when the job came back without a word about them."""
    previous = [e for e in history if e.get("event") == "started" and e.get("job") == job
                and e.get("restart") == restart - 1 and e.get("nodelist")]
    return commands.unhealthy_nodes(expand_hostlist(previous[-1]["nodelist"])) if previous else {}


def keep_out(bad: set[str], job_id: str) -> list[str]:
    """Every node the job's next run must not get: ``bad`` and those its own ``--exclude`` names.
    ``NoNodesLeftError`` when too few of its partition's nodes are left for it."""
    fields = commands.job_fields(job_id)
    nodes = bad | excluded_by_user(fields.get("ExcNodeList", ""))
    partition = fields.get("Partition", "")
    check_fit(nodes, partition=partition, partition_nodes=commands.partition_nodes(partition),
              needed=fewest_nodes(fields.get("NumNodes", "")))
    return sorted(nodes)
