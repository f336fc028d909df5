"""What each thing our training loop adds to a step costs, measured inside one pair of ranks.

The seed article's DDP step (SimpleModel, 64 samples per rank, SGD, 2 gloo ranks on CPU) runs in
blocks of ``--block`` steps; the blocks cycle through the plain step and the plain step plus one of
ours (the stop vote, the learning-rate schedule, the loss mean every 20 steps that the metrics
take, all of them), so neighbouring blocks see the same machine. Whole runs drift by 20-30 % here
(``overhead.py`` takes turns to cope); alternating blocks bring that to a few per cent, enough to
single out what costs more (the vote at every step, as it was, took a fifth of the step). Each row:
the median of (plain block time / that block's time) over the cycles, with the quartiles; 1.000
is free.

    python -m tests.bench.step_costs --cycles 60
"""

import argparse
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn, optim

from cluster.runtime.stop_vote import StopVote
from cluster.warning_signals import StopFlag
from jobs.loop import global_mean
from jobs.networks import SimpleModel
from jobs.optim import build_scheduler
from jobs.settings import OptimConfig
from tests.gloo_ranks import spawn_gloo_ranks

REPO = Path(__file__).resolve().parents[2]

WORLD_SIZE, PER_RANK_BATCH, LOG_EVERY = 2, 64, 20


def additions(optimizer: optim.Optimizer, total_steps: int) -> dict[str, Callable[[int, torch.Tensor], None]]:
    """What runs after the plain step, by name; each gets the step number and the step's loss."""
    flag = StopFlag(("USR2",))
    vote = StopVote(flag, torch.device("cpu"))  # about every 0.25 s
    every_step = StopVote(flag, torch.device("cpu"), interval_s=0.0)  # the vote as it was: every step
    scheduler = build_scheduler(OptimConfig(name="sgd", lr=0.05), optimizer, total_steps=total_steps)

    def loss_mean(step: int, loss: torch.Tensor) -> None:
        if step % LOG_EVERY == 0:
            global_mean(loss, contributors=WORLD_SIZE)

    def all_of_ours(step: int, loss: torch.Tensor) -> None:
        vote.poll(step)
        scheduler.step()
        loss_mean(step, loss)

    return {
        "plain": lambda step, loss: None,
        "+ stop vote (every 0.25 s)": lambda step, loss: vote.poll(step),
        "+ stop vote at every step (before)": lambda step, loss: every_step.poll(step),
        "+ lr schedule": lambda step, loss: scheduler.step(),
        f"+ loss mean every {LOG_EVERY} steps": loss_mean,
        "all of ours (not the 'before' vote)": all_of_ours,
    }


def rank_main(rank: int, cycles: int, block: int) -> None:
    torch.set_num_threads(max(1, len(os.sched_getaffinity(0)) // WORLD_SIZE))
    torch.manual_seed(0)
    model = nn.parallel.DistributedDataParallel(SimpleModel())
    optimizer = optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    batches = [(torch.randn(PER_RANK_BATCH, 1, 28, 28), torch.randint(0, 10, (PER_RANK_BATCH,))) for _ in range(8)]
    extras = additions(optimizer, total_steps=(cycles + 1) * block * 6)  # every step of every block
    times: dict[str, list[float]] = {name: [] for name in extras}
    step = 0
    for cycle in range(cycles + 1):  # the first cycle warms up
        for name, extra in extras.items():
            dist.barrier()
            began = time.perf_counter()
            for _ in range(block):
                inputs, targets = batches[step % len(batches)]
                optimizer.zero_grad()
                loss = nn.functional.cross_entropy(model(inputs), targets)
                loss.backward()
                optimizer.step()
                step += 1
                extra(step, loss)
            if cycle:
                times[name].append(time.perf_counter() - began)
    if rank == 0:
        report(times, block)


def report(times: dict[str, list[float]], block: int) -> None:
    plain = times["plain"]
    print(f"{len(plain)} cycles of {block}-step blocks, {WORLD_SIZE} gloo ranks, {len(os.sched_getaffinity(0))} CPUs; "
          f"plain step: {statistics.median(plain) / block * 1000:.2f} ms (median)")
    print(f"{'step':<40} {'ms/step':>8} {'throughput ratio to plain, median (quartiles)':>48}")
    for name, values in times.items():
        ratios = [p / v for p, v in zip(plain, values)]
        low, _, high = statistics.quantiles(ratios, n=4)
        print(f"{name:<40} {statistics.median(values) / block * 1000:>8.2f} "
              f"{statistics.median(ratios):>30.3f} ({low:.3f}-{high:.3f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cycles", type=int, default=60, help="cycles through every kind of block")
    parser.add_argument("--block", type=int, default=100, help="steps per block")
    args = parser.parse_args()
    spawn_gloo_ranks(rank_main, args.cycles, args.block, world_size=WORLD_SIZE)


if __name__ == "__main__":
    main()
