"""An optional check of every node before training (``cluster.start(health_check=True)``): each rank times a short
matrix multiply on its device, the ranks all-reduce a known tensor, and all of them see every result. A node where
the check fails, or that is far slower than the fastest, is named; the caller keeps it out and requeues the job
before any training time is spent on it.

``CLUSTERJOBS_HEALTH_FAIL=node2,node3`` makes the check fail on those nodes: how to rehearse a broken node.
"""

import dataclasses
import os
import time

import torch
import torch.distributed as dist

from cluster.errors import one_line

SLOW_FACTOR = 4.0  # a node this many times slower than the fastest is unhealthy (timings are a few ms: noisy)
INJECT_VARIABLE = "CLUSTERJOBS_HEALTH_FAIL"


@dataclasses.dataclass(frozen=True)
class RankCheck:
    """One rank's result: its node, the best time of its matrix multiplies, and what failed ("" if nothing)."""

    host: str
    seconds: float
    error: str


def node_name() -> str:
    """The node as Slurm names it (its hostname elsewhere)."""
    return os.environ.get("SLURMD_NODENAME") or os.uname().nodename


def time_matmul(device: torch.device, *, size: int = 256, repeats: int = 5) -> float:
    """The best of ``repeats`` timings of a ``size`` x ``size`` matrix multiply (the best: robust to a busy moment),
    checked against a known result."""
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=generator).to(device)
    expected = (a @ a).sum().item()
    best = float("inf")
    for _ in range(repeats):
        began = time.perf_counter()
        product = a @ a
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - began)
    if not torch.isclose(product.sum().cpu(), torch.tensor(expected), rtol=1e-3):
        raise RuntimeError("the matrix multiply gives a wrong result")
    return best


def check_this_rank(device: torch.device) -> RankCheck:
    host = node_name()
    if host in os.environ.get(INJECT_VARIABLE, "").split(","):
        return RankCheck(host, float("inf"), f"failed on purpose ({INJECT_VARIABLE})")
    try:
        return RankCheck(host, time_matmul(device), "")
    except Exception as error:  # a broken device: reported, so the whole job learns of it in the gather
        return RankCheck(host, float("inf"), one_line(error))


def check_all(device: torch.device) -> list[RankCheck]:
    """Every rank's check, on every rank (a collective: the all-reduce of a known tensor is part of it)."""
    mine = check_this_rank(device)
    total = torch.ones(1, device=device)
    dist.all_reduce(total)
    if total.item() != dist.get_world_size():
        mine = dataclasses.replace(mine, error=mine.error or f"the all-reduce gave {total.item()}")
    results: list[RankCheck | None] = [None] * dist.get_world_size()
    dist.all_gather_object(results, mine)
    return [result for result in results if result is not None]


def unhealthy(results: list[RankCheck], *, slow_factor: float = SLOW_FACTOR) -> dict[str, str]:
    """The nodes to keep out, and why: a failed check on any of their ranks, or their slowest rank more than
    ``slow_factor`` times the fastest node's."""
    bad: dict[str, str] = {}
    for result in results:
        if result.error and result.host not in bad:
            bad[result.host] = result.error
    slowest: dict[str, float] = {}
    for result in results:
        if result.host not in bad:  # a failed node is no measure of speed
            slowest[result.host] = max(slowest.get(result.host, 0.0), result.seconds)
    if slowest:
        fastest = min(slowest.values())
        for host, seconds in slowest.items():
            if seconds > slow_factor * fastest and host not in bad:
                bad[host] = f"{seconds * 1e3:.2f} ms a matrix multiply, {seconds / fastest:.1f}x the fastest node's"
    return bad
