"""GPU step time, one run: our loop (``python -m jobs.train``, one rank per GPU, NCCL) against a plain DDP
script on the same GPUs, the same model (the seed article's MLP made wide enough to keep a GPU busy) and
the same per-rank batch. The sides take turns, round after round; each reports samples/s over its steady
steps (after the first 50), from the times of its step notes. Absolute figures mean something on a GPU.

    python -m tests.bench.gpu_step --steps 300 --rounds 3
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

from jobs.networks import SimpleModel

REPO = Path(__file__).resolve().parents[2]
HIDDEN, PER_RANK_BATCH, WARM = 4096, 256, 50
NOTE_EVERY = 10  # ours' metrics interval here


def plain_rank(rank: int, world: int, port: int, steps: int, result: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.cuda.set_device(rank)
    dist.init_process_group("nccl", rank=rank, world_size=world)
    torch.manual_seed(0)
    data = torch.randn(PER_RANK_BATCH, 1, 28, 28, device="cuda")
    target = torch.randint(10, (PER_RANK_BATCH,), device="cuda")
    model = nn.parallel.DistributedDataParallel(SimpleModel(28 * 28, HIDDEN, 10).cuda(), device_ids=[rank])
    optimizer = optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    notes = []
    for step in range(1, steps + 1):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(data), target).backward()
        optimizer.step()
        if step % NOTE_EVERY == 0:
            torch.cuda.synchronize()
            notes.append((step, time.time()))
    if rank == 0:
        Path(result).write_text(json.dumps(notes))
    dist.destroy_process_group()


def steady_rate(notes: list[tuple[int, float]], world: int) -> float:
    kept = [(step, moment) for step, moment in notes if step >= WARM]
    (first_step, first), (last_step, last) = kept[0], kept[-1]
    return (last_step - first_step) * PER_RANK_BATCH * world / (last - first)


def run_plain(steps: int, world: int, folder: Path) -> float:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    result = folder / "plain.json"
    mp.spawn(plain_rank, args=(world, port, steps, str(result)), nprocs=world, join=True)
    return steady_rate(json.loads(result.read_text()), world)


def run_ours(steps: int, world: int, folder: Path) -> float:
    run_dir = folder / "ours"
    subprocess.run([sys.executable, "-m", "jobs.train", f"train.steps={steps}", f"model.hidden={HIDDEN}",
                    f"train.global_batch_size={PER_RANK_BATCH * world}", f"train.log_every_steps={NOTE_EVERY}",
                    f"train.checkpoint_every_steps={steps}", f"cluster.tasks_per_node={world}",
                    f"hydra.run.dir={run_dir}"], cwd=REPO, check=True, capture_output=True)
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return steady_rate([(r["step"], r["time"]) for r in records if r["step"] % NOTE_EVERY == 0], world)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    world = torch.cuda.device_count()
    if not world:
        sys.exit("no CUDA device visible: this benchmark is for a GPU machine")
    ours, plain = [], []
    with tempfile.TemporaryDirectory() as scratch:
        for index in range(args.rounds):
            folder = Path(scratch) / str(index)
            folder.mkdir()
            sides = [("ours", run_ours), ("plain", run_plain)]
            for name, side in sides if index % 2 == 0 else reversed(sides):  # who goes first alternates
                (ours if name == "ours" else plain).append(side(args.steps, world, folder))
    print(f"GPU step, {world} GPU(s) x {PER_RANK_BATCH} samples, MLP 784-{HIDDEN}-10, {args.rounds} round(s), "
          f"steady samples/s (median, min-max)")
    for name, rates in (("ours (jobs.train, NCCL)", ours), ("plain DDP script", plain)):
        print(f"  {name:26} {statistics.median(rates):12,.0f}  ({min(rates):,.0f}-{max(rates):,.0f})")
    ratios = [a / b for a, b in zip(ours, plain)]
    print(f"  ratio ours/plain: {statistics.median(ratios):.3f} ({min(ratios):.3f}-{max(ratios):.3f})")


if __name__ == "__main__":
    main()
