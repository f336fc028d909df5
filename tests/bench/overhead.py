"""Training throughput of ``python -m jobs.train`` (DDP, 2 CPU ranks) against a plain PyTorch script, one run.

The plain side is the seed article's example (``../shared/seeds/001_*``: mp.spawn, gloo,
DistributedSampler, DDP, SGD) on the same model (SimpleModel 784-128-10), data (the synthetic
default), global batch (128: 64 per rank), optimizer (SGD, lr 0.05, momentum 0.9) and steps, with
the same threads per rank. Ours runs twice per round: as a user gets it (metrics every 20 steps, a
checkpoint every 30 minutes, so none inside a run this short but the final one) and with the cadence the
defaults had before ``train.checkpoint_every_min`` (an async checkpoint every 100 steps).

This machine's speed drifts by 20-30 % from one run to the next (other tenants), far more than the
1 % to be shown, so the three sides of a round run at the same time and take turns on the CPUs:
each runs alone for a slice (``--slice-s``) while the others are stopped (SIGSTOP to their
sessions), turn after turn until all have finished; who goes first changes from round to round.
Each side notes the time of step 1 and of every 20th step on rank 0 (ours: ``metrics.jsonl``), and
only the time it ran counts. Two rates per side: the whole loop (step 1 to the last step) and the
steady rate over the median 100-step window (each holds the same work: five metrics records and,
for ours every 100 steps, one checkpoint), which also leaves out the bursts when another tenant takes the
CPUs. The final checkpoint falls after the last step on both of ours (``checkpoint_io.py`` measures
saves); start-up is ``startup.py``'s. Ratios are ours / plain in the same round, median and spread
over the rounds.

    python -m tests.bench.overhead --steps 2000 --rounds 5
"""

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn, optim
from torch.utils.data import DataLoader, DistributedSampler

from jobs.data import synthetic
from jobs.networks import SimpleModel
from tests.gloo_ranks import spawn_gloo_ranks

REPO = Path(__file__).resolve().parents[2]

WORLD_SIZE, PER_RANK_BATCH = 2, 64
NOTE_EVERY, WINDOW = 20, 100  # ours' default metrics interval; a window holds whole intervals
Notes = list[tuple[int, float]]  # (step, time.time() after it): step 1 and every NOTE_EVERY-th


def plain_rank(rank: int, steps: int, result: str) -> None:
    """The seed article's ``train(rank, world_size)`` (its group set up by ``spawn_gloo_ranks``, as the article's
    ``setup``), counting steps instead of epochs."""
    torch.set_num_threads(max(1, len(os.sched_getaffinity(0)) // WORLD_SIZE))  # as ours does
    torch.manual_seed(0)
    dataset = synthetic()
    sampler = DistributedSampler(dataset, num_replicas=WORLD_SIZE, rank=rank)
    loader = DataLoader(dataset, batch_size=PER_RANK_BATCH, sampler=sampler, drop_last=True)
    model = nn.parallel.DistributedDataParallel(SimpleModel())
    optimizer = optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    step, epoch, notes = 0, 0, []
    while step < steps:
        sampler.set_epoch(epoch)
        for data, target in loader:
            optimizer.zero_grad()
            loss = nn.functional.cross_entropy(model(data), target)
            loss.backward()
            optimizer.step()
            step += 1
            if step == 1 or step % NOTE_EVERY == 0:
                notes.append((step, time.time()))
            if step == steps:
                break
        epoch += 1
    if rank == 0:
        Path(result).write_text(json.dumps(notes))


def ours_notes(run_dir: Path) -> Notes:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [(record["step"], record["time"]) for record in records]


def take_turns(processes: list[subprocess.Popen], slice_s: float) -> list[list[tuple[float, float]]]:
    """Run the processes' sessions one at a time, ``slice_s`` each in turn, the others stopped, until all
    have exited; each one's running spans (time.time())."""
    spans: list[list[tuple[float, float]]] = [[] for _ in processes]

    def send(process: subprocess.Popen, number: int) -> None:
        try:
            os.killpg(process.pid, number)
        except ProcessLookupError:  # the whole session is gone
            pass

    for process in processes:
        send(process, signal.SIGSTOP)
    while any(process.poll() is None for process in processes):
        for process, own in zip(processes, spans):
            if process.poll() is not None:
                continue
            send(process, signal.SIGCONT)
            began = time.time()
            try:
                process.wait(timeout=slice_s)
            except subprocess.TimeoutExpired:
                send(process, signal.SIGSTOP)
            own.append((began, time.time()))
    return spans


def rates(notes: Notes, spans: list[tuple[float, float]]) -> tuple[float, float]:
    """(whole, steady) samples per second, over the time the side ran."""
    def ran_until(moment: float) -> float:
        return sum(max(0.0, min(end, moment) - began) for began, end in spans)

    batch = PER_RANK_BATCH * WORLD_SIZE
    (first_step, first), (last_step, last) = notes[0], notes[-1]
    whole = (last_step - first_step) * batch / (ran_until(last) - ran_until(first))
    bounds = [ran_until(moment) for step, moment in notes if step % WINDOW == 0]
    steady = WINDOW * batch / statistics.median(b - a for a, b in zip(bounds, bounds[1:]))
    return whole, steady


def one_round(steps: int, folder: Path, sides: dict[str, tuple[str, ...]], slice_s: float,
              first: int) -> dict[str, tuple[float, float]]:
    """Each side's (whole, steady) rate; side number ``first`` takes the first turn, the others follow."""
    folder.mkdir(parents=True)
    commands = {name: [sys.executable, "-m", "jobs.train", f"train.steps={steps}", "cluster.tasks_per_node=2",
                       f"train.log_every_steps={NOTE_EVERY}",
                       *overrides, f"hydra.run.dir={folder / str(index)}"]
                for index, (name, overrides) in enumerate(sides.items())}
    commands["plain"] = [sys.executable, "-m", "tests.bench.overhead", "--plain", str(steps),
                         str(folder / "plain.json")]
    processes = [subprocess.Popen(command, cwd=REPO, start_new_session=True, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.PIPE) for command in commands.values()]
    order = [(first + i) % len(processes) for i in range(len(processes))]
    turns = take_turns([processes[i] for i in order], slice_s)
    spans = [turns[order.index(i)] for i in range(len(processes))]
    for command, process in zip(commands.values(), processes):
        if process.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed:\n{process.stderr.read().decode()[-2000:]}")
    notes = [ours_notes(folder / str(index)) for index in range(len(sides))]
    notes.append([tuple(note) for note in json.loads((folder / "plain.json").read_text())])
    return {name: rates(side, own) for name, side, own in zip(commands, notes, spans)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=2000, help="optimizer steps per run")
    parser.add_argument("--rounds", type=int, default=5, help="rounds of the three sides, taking turns")
    parser.add_argument("--slice-s", type=float, default=0.5, help="seconds each side runs alone in its turn")
    parser.add_argument("--plain", nargs=2, metavar=("STEPS", "RESULT"), help=argparse.SUPPRESS)  # one plain run
    args = parser.parse_args()
    if args.plain:
        spawn_gloo_ranks(plain_rank, int(args.plain[0]), args.plain[1], world_size=WORLD_SIZE)
        return
    sides = {
        "ours, defaults": (),
        "ours, a checkpoint every 100": ("train.checkpoint_every_steps=100",),
    }
    runs: dict[str, list[tuple[float, float]]] = {name: [] for name in [*sides, "plain"]}  # (whole, steady)
    with tempfile.TemporaryDirectory(prefix="overhead-bench-") as tmp:
        for round_ in range(args.rounds):
            for name, figures in one_round(args.steps, Path(tmp) / str(round_), sides, args.slice_s,
                                             first=round_).items():
                runs[name].append(figures)
            print(f"round {round_ + 1} (whole / steady samples/s): "
                  + ", ".join(f"{n} {r[-1][0]:,.0f} / {r[-1][1]:,.0f}" for n, r in runs.items()), flush=True)
    print(f"\n{args.steps} steps, global batch {PER_RANK_BATCH * WORLD_SIZE}, {WORLD_SIZE} gloo ranks, "
          f"{len(os.sched_getaffinity(0))} CPUs; {args.rounds} rounds, turns of {args.slice_s:g} s; "
          "ratio to plain in the same round, median (min-max)")
    print(f"{'side':<30} {'whole samples/s':>15} {'ratio':>21} {'steady samples/s':>17} {'ratio':>21}")
    for name, values in runs.items():
        row = f"{name:<30}"
        for figure in (0, 1):
            ratios = [v[figure] / p[figure] for v, p in zip(values, runs["plain"])]
            row += (f" {statistics.median(v[figure] for v in values):>15,.0f} {statistics.median(ratios):>6.3f} "
                    f"({min(ratios):.3f}-{max(ratios):.3f})")
        print(row)

if __name__ == "__main__":
    main()
