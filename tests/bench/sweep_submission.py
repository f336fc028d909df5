"""Time until the prompt returns for a sweep on Slurm, and the files it wrote: ours against Hydra's submitit launcher.

For each sweep size N (members ``train.seed=range(0,N)``, one step of the default MLP each), every member held
in the queue (``--begin=now+1hour``) so that what is on disk afterwards is what submission wrote:

- ours: ``python -m jobs.train -m cluster=slurm ...`` returns once the arrays are submitted; then cancelled.
- Hydra's submitit launcher (``hydra/launcher=submitit_slurm``): its time to submission (the array shows in
  ``squeue``; it would then wait for every member to end) and the files it wrote by then; then killed and
  cancelled. Sizes above ``--hydra-max`` are not run (it composes each member in full: ~0.15 s a member).

Every run starts on an empty queue (the bench waits for the cancelled tasks to leave it). Needs the local
cluster (``slurm/local-cluster up``), nothing else queued, and, for the comparison, a Python that imports
``hydra_plugins.hydra_submitit_launcher`` beside this project (``--hydra-python``; for instance
``pip install --target /tmp/hsl --no-deps hydra-submitit-launcher`` and a wrapper that puts /tmp/hsl on
PYTHONPATH).

    python -m tests.bench.sweep_submission --sizes 1000 10000 --hydra-python /tmp/hsl-python
"""

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
HELD = "now+1hour"  # sbatch --begin: no member starts, so nothing but the submission writes


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000], help="sweep sizes N")
    parser.add_argument("--repeats", type=int, default=3, help="runs of ours per size (median and spread)")
    parser.add_argument("--hydra-python", default="", help="a Python with hydra-submitit-launcher ('': skip)")
    parser.add_argument("--hydra-max", type=int, default=1000, help="largest sweep to give Hydra's launcher")
    parser.add_argument("--hydra-timeout", type=float, default=1800, help="seconds Hydra's launcher may take to submit")
    return parser.parse_args()


def files_under(folder: Path) -> tuple[int, int]:
    """(files, bytes) under ``folder``."""
    files = [p for p in folder.rglob("*") if p.is_file()]
    return len(files), sum(p.stat().st_size for p in files)


def ours(size: int, folder: Path) -> tuple[float, int, int]:
    """(seconds to the prompt, files, bytes written)."""
    began = time.monotonic()
    subprocess.run([sys.executable, "-m", "jobs.train", "-m", "cluster=slurm", "train.steps=1",
                    f"train.seed=range(0,{size})", f"+cluster.additional.begin={HELD}", f"hydra.sweep.dir={folder}"],
                   cwd=REPO, check=True, capture_output=True)
    seconds = time.monotonic() - began
    written = files_under(folder)
    subprocess.run([sys.executable, "-m", "cluster", "cancel", str(folder)], cwd=REPO, capture_output=True)
    wait_until_idle()
    return seconds, *written


def wait_until_idle(timeout_s: float = 300) -> None:
    """Until slurmctld has cleared what was cancelled: a sweep submitted while it still ends 10,000 tasks
    waits for it (sbatch took up to 3x longer), which says nothing of the launcher."""
    deadline = time.monotonic() + timeout_s
    while subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True).stdout.strip():
        if time.monotonic() > deadline:
            raise RuntimeError("the cluster's queue did not empty; cancel what is left (scancel -u $USER)")
        time.sleep(0.5)
    time.sleep(2)  # the controller's clean-up after the last job left the queue


def queued(name: str) -> bool:
    return bool(subprocess.run(["squeue", "-h", "-n", name, "-o", "%i"], capture_output=True, text=True).stdout.strip())


def hydras(python: str, size: int, folder: Path, timeout_s: float) -> tuple[float | None, int, int]:
    """(seconds to submission, or None when it had not submitted after ``timeout_s``; files, bytes written by then)."""
    name = f"hydra-bench-{folder.name}"
    began = time.monotonic()
    process = subprocess.Popen(
        [python, "-m", "jobs.train", "-m", "hydra/launcher=submitit_slurm", "hydra/sweeper=basic", "cluster=debug",
         "train.steps=1", f"train.seed=range(0,{size})", f"hydra.sweep.dir={folder}",
         "hydra.launcher.timeout_min=10", "hydra.launcher.cpus_per_task=1", f"hydra.launcher.name={name}",
         f"+hydra.launcher.additional_parameters.begin={HELD}",
         f"hydra.launcher.submitit_folder={folder}/.submitit/%j"],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    submitted: float | None = None
    while not queued(name):
        if process.poll() is not None:
            raise RuntimeError(f"Hydra's launcher ended with {process.returncode} before submitting")
        if time.monotonic() - began > timeout_s:
            break
        time.sleep(0.05)
    else:
        submitted = time.monotonic() - began
        time.sleep(1)  # submitit renames its pickles once sbatch has answered
    written = files_under(folder)
    subprocess.run(["scancel", "-n", name])
    process.kill()
    process.wait()
    wait_until_idle()
    return submitted, *written


def main() -> None:
    args = parse_args()
    print(f"sweep submission on the local Slurm cluster, members held in the queue; ours: median of {args.repeats} "
          "(min-max)")
    print(f"{'members':>7}  {'ours to prompt s':>22}  {'ours files (MB)':>16}  {'hydra to submission s':>21}  "
          f"{'hydra files (MB)':>16}  {'ratio':>6}")
    with tempfile.TemporaryDirectory(prefix="sweep-bench-") as tmp:
        for size in args.sizes:
            runs = [ours(size, Path(tmp) / f"ours-{size}-{i}") for i in range(args.repeats)]
            times = [seconds for seconds, _, _ in runs]
            median = statistics.median(times)
            files, size_bytes = runs[0][1], runs[0][2]
            row = (f"{size:>7}  {median:>8.2f} ({min(times):.2f}-{max(times):.2f})  "
                   f"{files:>7} ({size_bytes / 1e6:5.1f})")
            if args.hydra_python and size <= args.hydra_max:
                submitted, hydra_files, hydra_bytes = hydras(args.hydra_python, size, Path(tmp) / f"hydra-{size}",
                                                             args.hydra_timeout)
                took = f"{submitted:.2f}" if submitted is not None else f"> {args.hydra_timeout:.0f} (stopped)"
                ratio = f"{submitted / median:>5.0f}x" if submitted is not None else "-"
                row += f"  {took:>21}  {hydra_files:>7} ({hydra_bytes / 1e6:5.1f})  {ratio:>6}"
            elif args.hydra_python:
                row += f"  {'not run (--hydra-max)':>21}"
            print(row, flush=True)


if __name__ == "__main__":
    main()
