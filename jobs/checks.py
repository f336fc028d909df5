"""Everything that can be known to fail before a rank starts: checked for a run, and for every member of
a sweep before any is submitted.

torch is imported only when there is a checkpoint to check, or when a user's model, data or loss module
imports it (checking those targets imports them): importing it takes 2-4 s here, and a sweep of fresh
members of the built-in models is submitted without it (the ranks import it on their nodes).
"""

import sys
from pathlib import Path

from cluster.rundir import RunDir, check_writable
from cluster.slurm.sbatch import check_setup
from jobs.data import TRAIN_SAMPLES, check_data, dataset_size, has_own_split, held_out_count
from jobs.plan import JobPlan
from jobs.targets import FROM_THE_DATA
from jobs.user_errors import describe


def check_before_start(plan: JobPlan, run_dir: Path, *, world_size: int | None = None,
                       make_run_dir: bool = True) -> None:
    """Check the plan against its world, data and run directory (world size: the plan's, by default; the run
    directory is made here unless ``make_run_dir`` is false: a sweep member's is made by its job)."""
    world_size = world_size or plan.world_size or 1
    dims = plan.check_world(world_size)
    if plan.slurm is not None and plan.slurm.elastic:
        check_every_size(plan, plan.slurm.world_sizes)
    plan.model.check(supplied=FROM_THE_DATA)  # importing the user's code, without building it
    if "torch" in sys.modules:  # the model's module imported it (a built-in's does not: it is ours, and known)
        from torch import nn

        plan.model.check_returns(nn.Module, "a torch.nn.Module")
    check_split_points(plan)
    check_data(plan.data)
    check_validation(plan)
    plan.loss.check(called_with=2)  # (output, target)
    check_batch_fits_the_data(plan, dims.dp)
    if plan.slurm is not None:
        check_setup(plan.slurm)
        check_slurm_devices(plan)
    check_writable(run_dir, make=make_run_dir)
    if RunDir(run_dir).checkpoints.is_dir():
        check_checkpoint(plan, RunDir(run_dir).checkpoints, world_size)


def check_every_size(plan: JobPlan, world_sizes: list[int]) -> None:
    """An elastic job may start on any of ``world_sizes`` ranks: the plan must fit each (cluster.min_nodes)."""
    tasks = plan.slurm.tasks_per_node if plan.slurm is not None else 1
    for world_size in world_sizes:
        try:
            plan.check_world(world_size)
        except ValueError as error:
            default = ("" if plan.train.micro_batch_size else " (train.micro_batch_size=0 is the per-rank batch on "
                       "cluster.nodes: set one that divides the share on every count)")
            raise ValueError(f"on {world_size // tasks} node(s) ({world_size} ranks), which cluster.min_nodes allows: "
                             f"{describe(error)}{default}; raise cluster.min_nodes or change the plan") from None


def check_split_points(plan: JobPlan) -> None:
    """Each split point must begin with a module the model's class assigns in ``__init__`` (what can be known
    without building it; the whole path is checked on the ranks, in ``jobs.pipeline.split_stages``)."""
    points = plan.strategy.split_points if plan.strategy.pipelined else ()
    assigned = plan.model.attributes() if points else None
    unknown = [point for point in points if assigned is not None and point.split(".")[0] not in assigned]
    if unknown:
        raise ValueError(f"strategy.split_points {unknown} name no module of {plan.model.path} (its __init__ "
                         f"assigns: {', '.join(assigned or [])}); name modules by their path, as blocks.2")


def check_slurm_devices(plan: JobPlan) -> None:
    """NCCL gives every rank a GPU of its own: a Slurm job must ask for as many per node as it starts ranks."""
    resources, backend = plan.slurm, plan.rank_backend
    assert resources is not None
    if backend != "nccl":
        return
    if not resources.gpus_per_node:
        raise ValueError("distributed.backend=nccl needs GPUs, and the job asks for none; set cluster.gpus_per_node, "
                         "or distributed.backend=gloo (or auto)")
    if resources.tasks_per_node > resources.gpus_per_node:
        raise ValueError(f"cluster.tasks_per_node={resources.tasks_per_node} ranks per node would share "
                         f"cluster.gpus_per_node={resources.gpus_per_node} GPUs, and NCCL needs a GPU per rank; set "
                         f"cluster.tasks_per_node={resources.gpus_per_node} (or 0: one per GPU), or "
                         "distributed.backend=gloo")


def check_validation(plan: JobPlan) -> None:
    """Validation data comes from one place: the dataset's own split, or ``data.val_fraction``."""
    own, fraction = has_own_split(plan.data), plan.split.val_fraction
    if own and fraction:
        raise ValueError(f"data.val_fraction={fraction}: {plan.data.path} makes its own validation data (it takes "
                         "split: the test set of mnist and cifar10); remove data.val_fraction")
    if plan.train.eval_every_steps and not own and not fraction:
        raise ValueError(f"train.eval_every_steps={plan.train.eval_every_steps} needs validation data, and "
                         f"{plan.data.path} has no split of its own; hold out a share with data.val_fraction=0.1")


def check_batch_fits_the_data(plan: JobPlan, dp: int) -> None:
    """Each replica must get at least one batch per epoch (the sampler gives it samples // dp, whole batches)."""
    samples, batch = dataset_size(plan.data), plan.train.global_batch_size
    if samples is not None:  # what data.val_fraction leaves to train on
        samples -= held_out_count(samples, plan.split.val_fraction)
    if samples is not None and (samples // dp) // (batch // dp) == 0:  # a user's dataset is counted on the ranks
        raise ValueError(f"the dataset has {samples} samples, fewer than one global batch "
                         f"(train.global_batch_size={batch}); lower train.global_batch_size"
                         + (", or raise data.num_samples" if plan.data.name not in TRAIN_SAMPLES else ""))


def check_checkpoint(plan: JobPlan, root: Path, world_size: int) -> None:
    """The checkpoint a run would resume from fits the plan, and its index is readable."""
    from cluster.runtime.checkpoint import SafeReader, check_compatible, latest_checkpoint, read_marker
    from cluster.runtime.job import fingerprint

    folder = latest_checkpoint(root)
    if folder is not None:  # what cluster.Job.resume checks on the ranks, told before they start
        check_compatible(read_marker(folder).get("config"), fingerprint(plan.fingerprint_config(), world_size),
                         folder=folder, allowed=plan.allowed_changes)
        SafeReader(str(folder)).read_metadata()  # a damaged index fails here, not in every rank
