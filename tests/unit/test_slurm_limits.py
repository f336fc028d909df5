"""Parsing scontrol's answers and checking a job against them (output captured on the local cluster)."""

import pytest

from cluster.slurm.limits import (
    Node,
    check_fits,
    parse_nodes,
    parse_partitions,
    parse_slurm_minutes,
)
from cluster.slurm.resources import SlurmResources

PARTITIONS = (
    "PartitionName=debug AllowGroups=ALL Default=YES QoS=N/A DefaultTime=NONE GraceTime=10 Hidden=NO "
    "MaxNodes=UNLIMITED MaxTime=1-00:00:00 MinNodes=0 Nodes=node[1-4] PriorityTier=1 State=UP TotalCPUs=8 "
    "TotalNodes=4 TRES=cpu=8,mem=16000M,node=4,billing=8\n"
    "PartitionName=small Default=NO MaxNodes=2 MaxTime=30:00 Nodes=node[1-2] State=UP TotalNodes=2\n"
    "PartitionName=off Default=NO MaxNodes=UNLIMITED MaxTime=UNLIMITED Nodes=node1 State=DOWN TotalNodes=1\n"
)
NODES = "\n".join(f"NodeName=node{i} Arch=x86_64 CPUAlloc=0 CPUEfctv=2 CPUTot=2 Gres=(null) State=IDLE"
                  for i in range(1, 4)) + "\nNodeName=node4 CPUTot=2 Gres=gpu:h100:4(S:0-1),gpu:a100:2 State=IDLE"


@pytest.mark.parametrize("text, minutes", [
    ("30", 30), ("30:00", 30), ("2:00:00", 120), ("1-00:00:00", 1440), ("2-12", 3600), ("1-0:30", 1470),
    ("UNLIMITED", None), ("INFINITE", None),
])
def test_slurm_time_formats(text, minutes):
    assert parse_slurm_minutes(text) == minutes


def test_partitions_are_parsed():
    debug, small, off = parse_partitions(PARTITIONS)
    assert (debug.name, debug.default, debug.max_nodes, debug.max_time_min, debug.total_nodes) == (
        "debug", True, None, 1440, 4)
    assert debug.nodes == ("node1", "node2", "node3", "node4")
    assert (small.max_nodes, small.max_time_min, off.state) == (2, 30, "DOWN")
    assert parse_nodes(NODES) == {"node1": Node(2, 0), "node2": Node(2, 0), "node3": Node(2, 0), "node4": Node(2, 6)}


def fits(**resources):
    return check_fits(SlurmResources(**resources), parse_partitions(PARTITIONS), parse_nodes(NODES))


def test_default_partition_is_chosen():
    assert fits(nodes=4, tasks_per_node=2).name == "debug"


@pytest.mark.parametrize("resources, message", [
    (dict(partition="gpu"), "partition 'gpu' does not exist (partitions: debug, small, off)"),
    (dict(nodes=5), "nodes=5 exceeds partition debug's 4 nodes"),
    (dict(nodes=3, partition="small"), "nodes=3 exceeds partition small's 2 nodes"),
    (dict(timeout_min=31, partition="small"), "timeout_min=31 exceeds partition small's MaxTime of 30 min"),
    (dict(partition="off"), "partition off is DOWN"),
    (dict(tasks_per_node=2, cpus_per_task=2), "4 CPUs per node, but only 0 of partition debug's nodes"),
    (dict(nodes=2, gpus_per_node=1), "gpus_per_node=1, but only 1 of partition debug's nodes have that many"),
])
def test_jobs_beyond_the_limits_are_refused_naming_the_limit(resources, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        fits(**resources)


def test_the_library_names_its_own_settings_and_the_trainer_its_config_keys():
    from cluster.errors import SettingError
    from jobs.user_errors import describe

    with pytest.raises(SettingError) as refused:
        fits(partition="gpu")
    assert str(refused.value).endswith("; set partition=NAME")  # a script calling the library sees its names
    assert describe(refused.value).endswith("; set cluster.partition=NAME")  # python -m jobs.train's users, keys


def test_excluded_nodes_and_constrained_features_must_exist():
    nodes = parse_nodes(NODES + "\nNodeName=node5 CPUTot=2 AvailableFeatures=ib,a100 State=IDLE")
    partitions = parse_partitions(PARTITIONS.replace("Nodes=node[1-4]", "Nodes=node[1-5]"))
    check_fits(SlurmResources(exclude="node[2-3]", constraint="ib&a100*1"), partitions, nodes)
    with pytest.raises(ValueError, match=r"^exclude names no node of this cluster: node9 "):
        check_fits(SlurmResources(exclude="node[1,9]"), partitions, nodes)
    with pytest.raises(ValueError, match=r"^constraint asks for h100, which no node of partition debug has "
                                         r"\(features: a100, ib\)"):
        check_fits(SlurmResources(constraint="ib|h100"), partitions, nodes)
