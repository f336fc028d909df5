"""What each Slurm task runs: submitit's job runner, with warning signals caught from the first instruction.

Slurm may send the ``--signal`` warning up to 60 s before it is due (sbatch(1), ``--signal``), so on
a short job it can come while Python still imports torch; with the default action the task dies of
it. Here a handler that only remembers the signal is installed before anything else is imported,
and submitit's own handlers (which checkpoint and requeue inside the handler) are never installed:
``cluster.warning_signals.StopFlag`` adopts what was caught, and the supervisor does the rest.

Usage (what the batch script's ``srun`` runs): ``python -u -m cluster.slurm.task_runner FOLDER``.
"""

import sys

from cluster import warning_signals

warning_signals.install_early()  # before submitit, torch and the job's pickle are imported


def main() -> None:
    from cluster.submitit_compat import run_pickled_job

    run_pickled_job(sys.argv[1])


if __name__ == "__main__":
    main()
