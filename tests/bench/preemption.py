"""Preemption, one run: steps lost and seconds from the preemption to training running again, ours
against a submitit ``Checkpointable`` job doing the same training.

Both train the seed article's MLP with DDP on 1 node x 2 Slurm tasks (gloo, the synthetic data, 64
samples per rank, SGD) in the local cluster's preemptible ``debug`` partition, and are preempted at a
random step by an exclusive 4-node job in ``high`` that sleeps 3 s:

- ours: ``python -m jobs.train cluster=slurm ...``; the signal sets a flag, all ranks stop at the
  next step boundary, save, and the job requeues and resumes from that step.
- submitit: the pattern of submitit's docs: a ``Checkpointable`` whose ``__call__`` trains and saves
  every ``--every`` steps (``torch.save`` from rank 0, renamed into place), and whose
  ``checkpoint()`` (submitit's, called on the signal) requeues it; it resumes from the last save.

Steps lost: the last step trained before the preemption minus the step training resumed from.
Time: from the preempting ``sbatch`` to the first step trained after the resume, both seen by
polling each side's own log every 50 ms. Rounds alternate the sides; medians with their spread.

    python -m tests.bench.preemption --rounds 2 --every 200
"""

import argparse
import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import submitit
import torch
import torch.distributed as dist
from torch import nn, optim
from torch.utils.data import DataLoader, DistributedSampler

from jobs.data import synthetic
from jobs.networks import SimpleModel

REPO = Path(__file__).resolve().parents[2]

STEPS, PER_RANK_BATCH = 3000, 64


class SubmititTrainer(submitit.helpers.Checkpointable):
    """Train, save every ``every`` steps, and let submitit requeue on the signal (its ``checkpoint``)."""

    def __init__(self, every: int, folder: str) -> None:
        self.every, self.folder = every, Path(folder)

    def __call__(self) -> None:
        submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
        dist.init_process_group("gloo")
        rank = dist.get_rank()
        torch.manual_seed(0)
        dataset = synthetic()
        sampler = DistributedSampler(dataset, num_replicas=dist.get_world_size(), rank=rank, drop_last=True)
        model = nn.parallel.DistributedDataParallel(SimpleModel(28 * 28, 128, 10))
        optimizer = optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        saved, log = self.folder / "state.pt", self.folder / "progress.jsonl"
        step = 0
        if saved.is_file():
            state = torch.load(saved, weights_only=True)
            model.module.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            step = state["step"]
            if rank == 0:
                _append(log, {"resumed": step})
        steps_per_epoch = len(sampler) // PER_RANK_BATCH
        while step < STEPS:
            sampler.set_epoch(step // steps_per_epoch)
            for data, target in DataLoader(dataset, batch_size=PER_RANK_BATCH, sampler=sampler, drop_last=True):
                optimizer.zero_grad()
                nn.functional.cross_entropy(model(data), target).backward()
                optimizer.step()
                step += 1
                if rank == 0:
                    _append(log, {"step": step})
                    if step % self.every == 0:
                        torch.save({"model": model.module.state_dict(), "optimizer": optimizer.state_dict(),
                                    "step": step}, self.folder / "state.tmp")
                        (self.folder / "state.tmp").replace(saved)
                if step == STEPS:
                    break
        dist.destroy_process_group()


def _append(path: Path, record: dict) -> None:
    with open(path, "a") as handle:
        handle.write(json.dumps(record) + "\n")


def _lines(path: Path) -> list[dict]:
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    return [json.loads(line) for line in text.splitlines() if line.endswith("}")]


def submitit_progress(folder: Path) -> tuple[int, int | None, int]:
    """(last step before the resume, step resumed from or None, last step)."""
    records = _lines(folder / "progress.jsonl")
    resumed = next((i for i, r in enumerate(records) if "resumed" in r), None)
    steps = [r["step"] for r in records if "step" in r]
    if resumed is None:
        return (steps[-1] if steps else 0), None, (steps[-1] if steps else 0)
    before = [r["step"] for r in records[:resumed] if "step" in r]
    return before[-1], records[resumed]["resumed"], steps[-1]


def ours_progress(run_dir: Path) -> tuple[int, int | None, int]:
    events = _lines(run_dir / "events.jsonl")
    metrics = _lines(run_dir / "metrics.jsonl")
    last = metrics[-1]["step"] if metrics else 0
    saved = [e["step"] for e in events if e["event"] == "requeued"]  # where it stopped, saved, and asked back
    resumed = [e["step"] for e in events if e["event"] == "resumed"]
    if not resumed:
        return last, None, last
    return saved[0], resumed[0], last


def preempt_and_measure(progress, at: int) -> tuple[int, float]:
    """Preempt once ``progress`` passes step ``at``; (steps lost, seconds until training runs again)."""
    while progress()[2] < at:
        time.sleep(0.05)
    subprocess.run(["sbatch", "-p", "high", "--nodes=4", "--exclusive", "--time=1", "--output=/dev/null",
                    "--wrap", "sleep 3"], check=True, capture_output=True)
    preempted = time.monotonic()
    deadline = preempted + 300
    while time.monotonic() < deadline:
        before, resumed, last = progress()
        if resumed is not None and last > resumed:
            return before - resumed, time.monotonic() - preempted
        time.sleep(0.05)
    raise RuntimeError("training did not run again within 300 s of the preemption")


def run_ours(folder: Path, at: int) -> tuple[int, float]:
    result = subprocess.run(
        [sys.executable, "-m", "jobs.train", "cluster=slurm", "cluster.nodes=1", "cluster.tasks_per_node=2",
         "cluster.timeout_min=10", f"train.steps={STEPS}", "train.log_every_steps=10",
         "train.checkpoint_every_steps=1000", f"hydra.run.dir={folder}"],
        cwd=REPO, check=True, capture_output=True, text=True)
    job = result.stdout.split("submitted job ")[1].split()[0]
    try:
        return preempt_and_measure(lambda: ours_progress(folder), at)
    finally:
        subprocess.run(["scancel", job])


def run_submitit(folder: Path, at: int, every: int) -> tuple[int, float]:
    executor = submitit.SlurmExecutor(folder=folder / "logs")
    executor.update_parameters(nodes=1, ntasks_per_node=2, cpus_per_task=1, time=10, partition="debug")
    job = executor.submit(SubmititTrainer(every, str(folder)))
    try:
        return preempt_and_measure(lambda: submitit_progress(folder), at)
    finally:
        job.cancel(check=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--every", type=int, default=200, help="the submitit side's steps between saves")
    args = parser.parse_args()
    figures: dict[str, list[tuple[int, float]]] = {"ours": [], f"submitit Checkpointable (save every {args.every})": []}
    with tempfile.TemporaryDirectory(prefix="preemption-bench-") as tmp:
        for round_ in range(args.rounds):
            at = random.Random().randint(600, 1800)
            figures["ours"].append(run_ours(Path(tmp) / f"ours-{round_}", at))
            figures[f"submitit Checkpointable (save every {args.every})"].append(
                run_submitit(Path(tmp) / f"submitit-{round_}", at, args.every))
            print(f"round {round_ + 1} (preempted at step {at}+): "
                  + ", ".join(f"{name}: {f[-1][0]} steps lost, {f[-1][1]:.1f} s" for name, f in figures.items()),
                  flush=True)
    print(f"\npreemption of a 1-node x 2-task DDP job, {args.rounds} rounds")
    for name, values in figures.items():
        lost, seconds = [v[0] for v in values], [v[1] for v in values]
        print(f"{name:<42} steps lost {statistics.median(lost):>6.0f} ({min(lost)}-{max(lost)})  "
              f"back in {statistics.median(seconds):5.1f} s ({min(seconds):.1f}-{max(seconds):.1f})")


if __name__ == "__main__":
    main()
