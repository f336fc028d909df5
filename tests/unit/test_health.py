"""Which nodes the health check keeps out (``cluster.runtime.health``), from every rank's result."""

import torch

from cluster.runtime.health import RankCheck, time_matmul, unhealthy


def test_a_node_far_slower_than_the_fastest_or_failing_on_any_rank_is_unhealthy():
    results = [RankCheck("node1", 0.0010, ""), RankCheck("node1", 0.0011, ""), RankCheck("node2", 0.0013, ""),
               RankCheck("node3", 0.0050, ""), RankCheck("node4", 0.0010, ""), RankCheck("node4", float("inf"),
                                                                                        "RuntimeError: CUDA error")]
    bad = unhealthy(results)
    assert set(bad) == {"node3", "node4"}
    assert bad["node4"] == "RuntimeError: CUDA error" and bad["node3"].endswith("4.5x the fastest node's")


def test_nodes_a_little_apart_are_all_healthy():
    assert unhealthy([RankCheck(f"node{i}", 0.001 * (1 + i / 2), "") for i in range(4)]) == {}


def test_the_matrix_multiply_is_timed_on_the_device():
    assert 0 < time_matmul(torch.device("cpu"), size=64, repeats=2) < 1
