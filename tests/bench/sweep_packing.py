"""A sweep of many short members on Slurm, unpacked (an allocation each) against packed (``hydra.launcher.pack``:
N members to an allocation, one after another), in one run: the time from the first submission to the last end.

Each member trains the default MLP for ``--steps`` steps on one rank: seconds of training behind seconds of
start-up (Python, torch, the process group) and of waiting in the queue, which a pack pays once for N members.
The sides take turns (``--rounds``), each on an empty queue; the times are Slurm's own (``sacct``: the earliest
Submit to the latest End of the sweep's array). Needs the local cluster (``slurm/local-cluster up``) and
nothing else queued.

    python -m tests.bench.sweep_packing --members 40 --pack 8 --rounds 2
"""

import argparse
import datetime
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.bench.sweep_submission import wait_until_idle

REPO = Path(__file__).resolve().parents[2]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--members", type=int, default=40, help="members of the sweep")
    parser.add_argument("--pack", type=int, default=8, help="members to an allocation on the packed side")
    parser.add_argument("--steps", type=int, default=100, help="training steps of each member")
    parser.add_argument("--rounds", type=int, default=2, help="turns of each side")
    return parser.parse_args()


def sweep(folder: Path, members: int, steps: int, pack: int) -> float:
    """Seconds from the sweep's first submission to its last member's end, as Slurm recorded them."""
    subprocess.run([sys.executable, "-m", "jobs.train", "-m", "cluster=slurm", f"train.steps={steps}",
                    f"train.seed=range(0,{members})", f"hydra.launcher.pack={pack}", f"hydra.sweep.dir={folder}"],
                   cwd=REPO, check=True, capture_output=True)
    while subprocess.run([sys.executable, "-m", "cluster", "status", str(folder)], cwd=REPO,
                         capture_output=True).returncode == 3:
        time.sleep(2)
    status = json.loads(subprocess.run([sys.executable, "-m", "cluster", "status", str(folder), "--json"], cwd=REPO,
                                       capture_output=True, text=True).stdout)
    assert status["counts"] == {"COMPLETED": members}, status["counts"]
    arrays = sorted({m["job"].split("_")[0] for m in status["members"]})
    time.sleep(3)  # the accounting database lags the end by a moment
    out = subprocess.run(["sacct", "-n", "-P", "-X", "-j", ",".join(arrays), "--format=Submit,End"],
                         capture_output=True, text=True, check=True).stdout
    rows = [line.split("|") for line in out.split()]
    submitted = min(datetime.datetime.fromisoformat(submit) for submit, _ in rows)
    ended = max(datetime.datetime.fromisoformat(end) for _, end in rows)
    wait_until_idle()
    return (ended - submitted).total_seconds()


def main() -> None:
    args = parse_args()
    times: dict[int, list[float]] = {1: [], args.pack: []}
    with tempfile.TemporaryDirectory(prefix="pack-bench-") as tmp:
        for turn in range(args.rounds):
            for pack in ((1, args.pack) if turn % 2 == 0 else (args.pack, 1)):
                times[pack].append(sweep(Path(tmp) / f"{turn}-{pack}", args.members, args.steps, pack))
                print(f"round {turn + 1}, pack {pack}: {times[pack][-1]:.0f} s", flush=True)
    unpacked, packed = statistics.median(times[1]), statistics.median(times[args.pack])
    print(f"{args.members} members of {args.steps} steps on the local cluster, first submission to last end "
          f"(median of {args.rounds}): unpacked {unpacked:.0f} s ({min(times[1]):.0f}-{max(times[1]):.0f}), "
          f"pack={args.pack} {packed:.0f} s ({min(times[args.pack]):.0f}-{max(times[args.pack]):.0f}); "
          f"packed takes {packed / unpacked:.2f} of the time ({unpacked / packed:.1f}x faster)")


if __name__ == "__main__":
    main()
