"""What each Slurm task runs: submitit's job runner, with warning signals caught from the first instruction.

Slurm may send the ``--signal`` warning up to 60 s before it is due (sbatch(1), ``--signal``), so on
a short job it can come while Python still imports torch; with the default action the task dies of
it. Here a handler that only remembers the signal is installed before anything else is imported,
and submitit's own handlers (which checkpoint and requeue inside the handler) are never installed:
``cluster.warning_signals.StopFlag`` adopts what was caught, and the supervisor does the rest.

Usage (what the batch script's ``srun`` runs): ``python -u -m cluster.slurm.task_runner FOLDER`` (a single run:
submitit's pickle in FOLDER), or ``... --sweep DIR --members SPANS [--pack N]`` (a sweep's array task:
``cluster.sweep.array_task``).
"""

import sys

from cluster import warning_signals

warning_signals.install_early()  # before submitit, torch and the job's pickle are imported


def main() -> None:
    if sys.argv[1:2] == ["--sweep"]:
        import argparse
        from pathlib import Path

        from cluster.sweep.array_task import parse_spans, run

        parser = argparse.ArgumentParser(prog="python -m cluster.slurm.task_runner")
        parser.add_argument("--sweep", type=Path, required=True, help="the sweep directory (submissions.pkl)")
        parser.add_argument("--members", type=parse_spans, required=True, help="the array's members, in task order")
        parser.add_argument("--pack", type=int, default=1, help="members each array task runs, one after another")
        args = parser.parse_args()
        sys.exit(run(args.sweep, args.members, pack=args.pack))
    from cluster.submitit_compat import run_pickled_job

    run_pickled_job(sys.argv[1])


if __name__ == "__main__":
    main()
