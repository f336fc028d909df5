"""Start-up, one run: seconds from the command to the first training step, ours against ``torchrun``.

The same script and config either way (``jobs.train``, the default MLP, 2 CPU ranks):

- ours: ``python -m jobs.train cluster=local`` (submitit's LocalExecutor starts the ranks);
- torchrun: ``torchrun --standalone --nproc-per-node=2 -m jobs.train cluster=inline`` (each rank
  composes the config itself and joins the group torchrun set up).

The first step is the moment rank 0's ``metrics.jsonl`` gets its first record (step 1, written right
after that step), polled every 5 ms. Rounds alternate the two; medians with their spread.

    python -m tests.bench.startup --rounds 5
"""

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

STEPS = ("train.steps=40", "train.checkpoint_every_steps=40")


def first_step_s(command: list[str], run_dir: Path) -> float:
    metrics = run_dir / "metrics.jsonl"
    started = time.monotonic()
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    while not (metrics.is_file() and metrics.stat().st_size):
        if process.poll() is not None:
            raise RuntimeError(f"{' '.join(command)} ended with {process.returncode}:\n{process.stderr.read()}")
        time.sleep(0.005)
    seconds = time.monotonic() - started
    if process.wait(timeout=300) != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{process.stderr.read()}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or "torchrun"
    times: dict[str, list[float]] = {"ours (cluster=local)": [], "torchrun (cluster=inline)": []}
    with tempfile.TemporaryDirectory(prefix="startup-bench-") as tmp:
        for round_ in range(args.rounds):
            ours_dir, torchrun_dir = Path(tmp) / f"ours-{round_}", Path(tmp) / f"torchrun-{round_}"
            times["ours (cluster=local)"].append(first_step_s(
                [sys.executable, "-m", "jobs.train", "cluster=local", "cluster.tasks_per_node=2", *STEPS,
                 f"hydra.run.dir={ours_dir}"], ours_dir))
            times["torchrun (cluster=inline)"].append(first_step_s(
                [torchrun, "--standalone", "--nproc-per-node=2", "-m", "jobs.train", "cluster=inline", *STEPS,
                 f"hydra.run.dir={torchrun_dir}"], torchrun_dir))
    print(f"seconds from the command to the first training step (2 ranks, {args.rounds} rounds)")
    baseline = statistics.median(times["torchrun (cluster=inline)"])
    for name, values in times.items():
        print(f"{name:<28} {statistics.median(values):6.2f}  ({min(values):.2f}-{max(values):.2f})  "
              f"{statistics.median(values) / baseline:.2f}x torchrun")


if __name__ == "__main__":
    main()
