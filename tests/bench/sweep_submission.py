"""Time until the prompt returns for a sweep on Slurm: ours against Hydra's submitit launcher, one run.

For each sweep size N (members ``train.seed=range(0,N)``, one step of the default MLP each):

- ours: ``python -m jobs.train -m cluster=slurm ...`` returns once the arrays are submitted; the sweep
  is then cancelled (``python -m cluster cancel``).
- Hydra's submitit launcher (``hydra/launcher=submitit_slurm``, each array task training in-process
  with ``cluster=debug``): its time to submission (the array shows in ``squeue``) and its time to return
  (it waits for every member). ``--hydra-wait-max N`` lets it finish only sweeps up to N members; larger
  ones are cancelled once submitted, and their time to return is not measured.

Every run starts on an empty queue (the bench waits for the cancelled tasks to leave it). Needs the
local cluster (``slurm/local-cluster up``), nothing else queued, and, for the comparison, a Python with
``hydra-submitit-launcher`` installed (``--hydra-python``; pip install hydra-submitit-launcher).

    python -m tests.bench.sweep_submission --sizes 12 200 1000 --hydra-python /tmp/hsl-venv/bin/python
"""

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[12, 200, 1000], help="sweep sizes N")
    parser.add_argument("--repeats", type=int, default=3, help="runs of ours per size (median and spread)")
    parser.add_argument("--hydra-python", default="", help="a Python with hydra-submitit-launcher ('' : skip)")
    parser.add_argument("--hydra-wait-max", type=int, default=12, help="largest sweep Hydra's launcher may finish")
    return parser.parse_args()


def ours(size: int, folder: Path) -> float:
    began = time.monotonic()
    subprocess.run([sys.executable, "-m", "jobs.train", "-m", "cluster=slurm", "train.steps=1",
                    f"train.seed=range(0,{size})", f"hydra.sweep.dir={folder}"], cwd=REPO, check=True,
                   capture_output=True)
    seconds = time.monotonic() - began
    subprocess.run([sys.executable, "-m", "cluster", "cancel", str(folder)], cwd=REPO, capture_output=True)
    wait_until_idle()
    return seconds


def wait_until_idle(timeout_s: float = 300) -> None:
    """Until slurmctld has cleared what was cancelled: a sweep submitted while it still ends 1000 tasks
    waits for it (sbatch took up to 3x longer), which says nothing of the launcher."""
    deadline = time.monotonic() + timeout_s
    while subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True).stdout.strip():
        if time.monotonic() > deadline:
            raise RuntimeError("the cluster's queue did not empty; cancel what is left (scancel -u $USER)")
        time.sleep(0.5)
    time.sleep(2)  # the controller's clean-up after the last job left the queue


def queued(name: str) -> bool:
    return bool(subprocess.run(["squeue", "-h", "-n", name, "-o", "%i"], capture_output=True, text=True).stdout.strip())


def hydras(python: str, size: int, folder: Path, *, wait: bool) -> tuple[float, float | None]:
    """(seconds to submission, seconds to return or None when cancelled once submitted)."""
    name = f"hydra-bench-{folder.name}"
    began = time.monotonic()
    process = subprocess.Popen(
        [python, "-m", "jobs.train", "-m", "hydra/launcher=submitit_slurm", "hydra/sweeper=basic", "cluster=debug",
         "train.steps=1", f"train.seed=range(0,{size})", f"hydra.sweep.dir={folder}",
         "hydra.launcher.timeout_min=10", "hydra.launcher.cpus_per_task=1", f"hydra.launcher.name={name}",
         f"hydra.launcher.submitit_folder={folder}/.submitit/%j"],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while not queued(name):
        if process.poll() is not None:
            raise RuntimeError(f"Hydra's launcher ended with {process.returncode} before submitting")
        time.sleep(0.05)
    submitted = time.monotonic() - began
    if not wait:
        subprocess.run(["scancel", "-n", name])
        process.kill()
        process.wait()
        wait_until_idle()
        return submitted, None
    process.wait()
    returned = time.monotonic() - began
    wait_until_idle()
    return submitted, returned


def main() -> None:
    args = parse_args()
    print(f"sweep submission on the local Slurm cluster; ours: median of {args.repeats} (min-max)")
    print(f"{'members':>7}  {'ours to prompt s':>22}  {'hydra to submission s':>21}  {'hydra to return s':>17}  "
          f"{'return ratio':>12}")
    with tempfile.TemporaryDirectory(prefix="sweep-bench-") as tmp:
        for size in args.sizes:
            times = [ours(size, Path(tmp) / f"ours-{size}-{i}") for i in range(args.repeats)]
            median = statistics.median(times)
            row = f"{size:>7}  {median:>8.2f} ({min(times):.2f}-{max(times):.2f})"
            if args.hydra_python:
                submitted, returned = hydras(args.hydra_python, size, Path(tmp) / f"hydra-{size}",
                                             wait=size <= args.hydra_wait_max)
                back = f"{returned:.2f}" if returned is not None else "not waited"
                ratio = f"{returned / median:.1f}x" if returned is not None else "-"
                row += f"  {submitted:>21.2f}  {back:>17}  {ratio:>12}"
            print(row, flush=True)


if __name__ == "__main__":
    main()
