"""Throughput of the seed script made preemption-safe with the public API against the same script without it.

``examples/seed_preemptible.py`` is ``examples/torchrun_ddp.py`` plus ten lines (``cluster.start``, a
``ResumableLoader``, ``job.step_done`` after each step: the stop vote and a background checkpoint every 100
steps); both run under ``python -m cluster run --local 2`` on the same data, and each prints the seconds of its
training loop (start-up left out: ``startup.py``). The two take turns, the order alternating from round to
round, as this machine drifts by 20-30 % between minutes. The ratio is plain seconds / API seconds (the API's
throughput relative to the plain script's: 1.0 costs nothing), median and range over the rounds.

    python -m tests.bench.api_overhead --epochs 60 --rounds 6
"""

import argparse
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def train_seconds(script: str, epochs: int, run_dir: Path) -> float:
    done = subprocess.run([sys.executable, "-m", "cluster", "run", "--local", "2", "--run-dir", str(run_dir), "--",
                           sys.executable, script, "--epochs", str(epochs)], cwd=REPO, capture_output=True,
                          text=True, timeout=900)
    found = re.search(r"train seconds: ([0-9.]+)", done.stdout)
    if done.returncode or not found:
        raise SystemExit(f"{script} failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    return float(found.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=60, help="epochs of 16 steps (2048 samples, 64 per rank)")
    parser.add_argument("--rounds", type=int, default=6)
    args = parser.parse_args()
    ratios = []
    with tempfile.TemporaryDirectory() as scratch:
        for round_ in range(args.rounds):
            sides = ["examples/torchrun_ddp.py", "examples/seed_preemptible.py"]
            order = sides if round_ % 2 == 0 else sides[::-1]
            seconds = {script: train_seconds(script, args.epochs, Path(scratch) / f"{round_}-{Path(script).stem}")
                       for script in order}
            ratio = seconds[sides[0]] / seconds[sides[1]]
            ratios.append(ratio)
            print(f"round {round_}: plain {seconds[sides[0]]:.3f} s, with the API {seconds[sides[1]]:.3f} s, "
                  f"ratio {ratio:.3f}", flush=True)
    steps = args.epochs * 16
    print(f"{steps} steps per run; API / plain throughput: median {statistics.median(ratios):.3f} "
          f"({min(ratios):.3f}-{max(ratios):.3f}) over {args.rounds} rounds")


if __name__ == "__main__":
    main()
