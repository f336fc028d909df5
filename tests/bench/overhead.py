"""Training throughput of ``python -m jobs.train`` (DDP, 2 CPU ranks) against a plain PyTorch script, one run.

The plain side is the seed article's example (``../shared/seeds/001_*``: mp.spawn, gloo,
DistributedSampler, DDP, SGD) on the same model (SimpleModel 784-128-10), data (the synthetic
default), global batch (128: 64 per rank), optimizer (SGD, lr 0.05, momentum 0.9) and steps, with
the same threads per rank. Each side times its training loop only (from its first step to its last,
on rank 0; start-up is ``startup.py``'s). Ours runs twice per round: as a user gets it (metrics every
20 steps, an async checkpoint every 100) and with only the final checkpoint. Rounds alternate the
three, so the machine's drift hits them all; ratios are ours / plain samples per second, median and
spread over the rounds.

    python tests/bench/overhead.py --steps 2000 --rounds 5
"""

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn, optim
from torch.utils.data import DataLoader, DistributedSampler

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from jobs.config import DataConfig  # noqa: E402  (the repository, run as a script)
from jobs.data import build_dataset  # noqa: E402
from jobs.models import SimpleModel  # noqa: E402  (the seed article's, 784-128-10)

WORLD_SIZE, PER_RANK_BATCH = 2, 64


def plain_rank(rank: int, steps: int, port: int, result: str) -> None:
    """The seed article's ``train(rank, world_size)``, counting steps instead of epochs."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD_SIZE)
    torch.set_num_threads(max(1, len(os.sched_getaffinity(0)) // WORLD_SIZE))  # as ours does
    torch.manual_seed(0)
    dataset = build_dataset(DataConfig(name="synthetic")).dataset
    sampler = DistributedSampler(dataset, num_replicas=WORLD_SIZE, rank=rank)
    loader = DataLoader(dataset, batch_size=PER_RANK_BATCH, sampler=sampler, drop_last=True)
    model = nn.parallel.DistributedDataParallel(SimpleModel())
    optimizer = optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    step, epoch = 0, 0
    dist.barrier()
    started = time.perf_counter()
    while step < steps:
        sampler.set_epoch(epoch)
        for data, target in loader:
            optimizer.zero_grad()
            loss = nn.functional.cross_entropy(model(data), target)
            loss.backward()
            optimizer.step()
            step += 1
            if step == steps:
                break
        epoch += 1
    elapsed = time.perf_counter() - started
    if rank == 0:
        Path(result).write_text(json.dumps({"samples_per_s": steps * PER_RANK_BATCH * WORLD_SIZE / elapsed,
                                            "final_loss": loss.item()}))
    dist.destroy_process_group()


def plain(steps: int, folder: Path) -> float:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    result = folder / "plain.json"
    mp.spawn(plain_rank, args=(steps, port, str(result)), nprocs=WORLD_SIZE, join=True)
    return json.loads(result.read_text())["samples_per_s"]


def ours(steps: int, folder: Path, *overrides: str) -> float:
    subprocess.run([sys.executable, "-m", "jobs.train", f"train.steps={steps}", "cluster.tasks_per_node=2",
                    *overrides, f"hydra.run.dir={folder}"], cwd=REPO, check=True, capture_output=True)
    return json.loads((folder / "summary.json").read_text())["samples_per_s"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=2000, help="optimizer steps per run")
    parser.add_argument("--rounds", type=int, default=5, help="rounds of (ours default, ours lean, plain)")
    args = parser.parse_args()
    sides = {
        "ours, defaults": ("train.checkpoint_every_steps=100",),
        "ours, final checkpoint only": (f"train.checkpoint_every_steps={args.steps}",),
    }
    rates: dict[str, list[float]] = {name: [] for name in [*sides, "plain"]}
    with tempfile.TemporaryDirectory(prefix="overhead-bench-") as tmp:
        for round_ in range(args.rounds):
            for side, (name, overrides) in enumerate(sides.items()):
                rates[name].append(ours(args.steps, Path(tmp) / f"{round_}-{side}", *overrides))
            rates["plain"].append(plain(args.steps, Path(tmp)))
            print(f"round {round_ + 1}: " + ", ".join(f"{n} {r[-1]:,.0f}" for n, r in rates.items()) + " samples/s",
                  flush=True)
    print(f"\n{args.steps} steps, global batch {PER_RANK_BATCH * WORLD_SIZE}, {WORLD_SIZE} gloo ranks, "
          f"{len(os.sched_getaffinity(0))} CPUs; {args.rounds} rounds")
    print(f"{'side':<30} {'samples/s median (min-max)':>30} {'ratio to plain median (min-max)':>34}")
    for name, values in rates.items():
        ratios = [v / p for v, p in zip(values, rates["plain"])]
        print(f"{name:<30} {statistics.median(values):>12,.0f} ({min(values):,.0f}-{max(values):,.0f})"
              f"{statistics.median(ratios):>16.3f} ({min(ratios):.3f}-{max(ratios):.3f})")


if __name__ == "__main__":
    main()
