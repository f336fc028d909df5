"""Ranks of a gloo group on this machine, for tests and benchmark scripts that need the collectives
without a launcher: ``mp.spawn`` on a free loopback port, each rank already in the group."""

import os
import socket
from collections.abc import Callable
from typing import Any

import torch.distributed as dist
import torch.multiprocessing as mp


def free_port() -> int:
    """A loopback port nobody listens on (for a rendezvous store)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def spawn_gloo_ranks(fn: Callable[..., None], *args: Any, world_size: int) -> None:
    """Run ``fn(rank, *args)`` in ``world_size`` processes joined in one gloo group; returns when all have."""
    mp.spawn(_in_group, args=(fn, free_port(), world_size, args), nprocs=world_size, join=True)


def _in_group(rank: int, fn: Callable[..., None], port: int, world_size: int, args: tuple) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        fn(rank, *args)
    finally:
        dist.destroy_process_group()
