"""Everything that can be known to fail before a rank starts: checked for a run, and for every member of
a sweep before any is submitted.

torch is imported only when there is a checkpoint to check: importing it takes 2-4 s here, and a sweep
of fresh members is submitted without it (the ranks import it on their nodes).
"""

from pathlib import Path

from cluster.rundir import RunDir, check_writable
from jobs.data import check_data_available
from jobs.plan import JobPlan


def check_before_start(plan: JobPlan, run_dir: Path, *, world_size: int | None = None) -> None:
    """Check the plan against its world, data and run directory (world size: the plan's, by default)."""
    world_size = world_size or plan.world_size or 1
    plan.check_world(world_size)
    check_data_available(plan.data)
    check_writable(run_dir)
    if RunDir(run_dir).checkpoints.is_dir():
        check_checkpoint(plan, RunDir(run_dir).checkpoints, world_size)


def check_checkpoint(plan: JobPlan, root: Path, world_size: int) -> None:
    """The checkpoint a run would resume from fits the plan, and its index is readable."""
    from cluster.runtime.checkpoint import SafeReader, latest_checkpoint
    from jobs.train_state import check_resumable

    folder = latest_checkpoint(root)
    if folder is not None:
        check_resumable(plan, folder, world_size)
        SafeReader(str(folder)).read_metadata()  # a damaged index fails here, not in every rank
