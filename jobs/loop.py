"""The training loop: data-parallel batches, metrics, periodic checkpoints, resume from the newest.

Plain functions around one loop; the strategy, the model and the data are built elsewhere.
"""

import hashlib
import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.tensor import DTensor
from torch.utils.data import DataLoader, DistributedSampler, Sampler

from cluster.environment import TaskEnvironment
from cluster.rundir import RunDir, write_json
from cluster.runtime.checkpoint import latest_checkpoint
from cluster.runtime.checkpoint_writer import CheckpointWriter
from cluster.runtime.rng import seed_everything
from cluster.runtime.supervisor import Supervisor
from jobs.data import build_dataset
from jobs.metrics import MetricsLog, ProgressLine
from jobs.models import build_model
from jobs.optim import build_optimizer, build_scheduler
from jobs.parallelize import parallelize
from jobs.pipeline import gather_places, gather_state, pipeline_step
from jobs.plan import JobPlan
from jobs.strategies import unwrap
from jobs.train_state import Trainee, checkpoint_meta, checkpoint_state, resume


class SkipFirst(Sampler[int]):
    """The first ``skip`` indices of an epoch left out: a resumed run's place inside its epoch,
    reached without loading the samples it skips."""

    def __init__(self, sampler: DistributedSampler, skip: int):
        self.sampler, self.skip = sampler, skip

    def __iter__(self) -> Iterator[int]:
        indices = iter(self.sampler)
        for _ in range(self.skip):
            next(indices)
        return indices

    def __len__(self) -> int:
        return len(self.sampler) - self.skip


def param_digest(model: nn.Module, *, staged: bool = False) -> str:
    """SHA-256 of every parameter and buffer of the whole model, by name: equal digests mean bit-identical
    models, whatever the strategy. Every rank calls it when the model is sharded or cut into ``staged`` parts.
    """
    state = {name: tensor.full_tensor() if isinstance(tensor, DTensor) else tensor  # a collective, same order
             for name, tensor in sorted(unwrap(model).state_dict().items())}
    if staged:
        state = gather_state(state)
    digest = hashlib.sha256()
    for name, tensor in sorted(state.items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def global_mean(value: torch.Tensor, *, contributors: int) -> float:
    """The mean of a scalar over the ``contributors`` ranks that hold one (the others pass 0: pipeline stages
    without the loss)."""
    total = value.detach().clone()
    dist.all_reduce(total)
    return total.item() / contributors


def train(plan: JobPlan, env: TaskEnvironment, device: torch.device, run_dir: Path,
          supervisor: Supervisor) -> dict[str, Any] | None:
    """Train to ``plan.train.steps`` and return the summary (rank 0) or None (other ranks).

    At a step boundary where ``supervisor`` says stop, every rank saves that step and hands over.
    """
    dims = plan.check_world(env.world_size)
    dp_index, _ = dims.coordinates(env.rank)
    cfg = plan.train
    seed_everything(cfg.seed)  # the same initial model on every rank
    data = build_dataset(plan.data)
    model, pipeline = parallelize(build_model(plan.model, sample_shape=data.sample_shape, num_classes=data.num_classes),
                                  plan, dims, rank=env.rank, device=device, sample_shape=data.sample_shape)
    optimizer = build_optimizer(plan.optim, model.parameters())
    trainee = Trainee(model, optimizer, build_scheduler(plan.optim, optimizer, total_steps=cfg.steps),
                      pipeline=pipeline)
    seed_everything(cfg.seed + 1 + env.rank)  # per-rank streams (dropout, augmentation) from here on
    writer = CheckpointWriter(RunDir(run_dir).checkpoints, rank=env.rank, keep=cfg.keep_checkpoints,
                              background=cfg.async_checkpoint, on_done=supervisor.saved)
    resume(trainee, plan, env, writer.root, group=writer.group)
    resumed_from = trainee.step
    places = gather_places(model, pipeline, local_rank=env.local_rank)
    if env.is_main:  # the layout as it came out, for checking against the plan (events.jsonl)
        supervisor.log.record("layout", ranks=places)
    supervisor.resumed(resumed_from)
    meta = checkpoint_meta(plan, env.world_size)

    # The ranks of one pipeline share a replica's batch (the first stage reads the inputs, the last the targets).
    per_rank_batch = cfg.global_batch_size // dims.dp
    sampler: DistributedSampler = DistributedSampler(data.dataset, num_replicas=dims.dp, rank=dp_index,
                                 shuffle=True, seed=cfg.seed, drop_last=True)
    steps_per_epoch = len(sampler) // per_rank_batch
    if steps_per_epoch == 0:
        raise ValueError(f"the dataset has {len(data.dataset)} samples, fewer than one global batch "
                         f"({cfg.global_batch_size}); lower train.global_batch_size")

    metrics = MetricsLog(run_dir, resumed_step=resumed_from) if env.is_main else None
    progress = ProgressLine(cfg.steps) if env.is_main else None
    started = interval_start = time.perf_counter()
    interval_steps = 0
    model.train()
    while trainee.step < cfg.steps:
        epoch, offset = divmod(trainee.step, steps_per_epoch)
        sampler.set_epoch(epoch)
        loader = DataLoader(data.dataset, batch_size=per_rank_batch,
                            sampler=SkipFirst(sampler, offset * per_rank_batch), drop_last=True,
                            num_workers=plan.data.num_workers)
        for inputs, targets in loader:
            loss = _step(trainee, inputs.to(device), targets.to(device))
            interval_steps += 1
            stop = supervisor.should_stop(trainee.step)
            log_now = trainee.step % cfg.log_every_steps == 0 or trainee.step in (1, cfg.steps)
            save_now = stop or trainee.step % cfg.checkpoint_every_steps == 0 or trainee.step == cfg.steps
            if log_now or save_now:
                trainee.loss = global_mean(loss, contributors=dims.dp)
                if not math.isfinite(trainee.loss):  # every rank sees the same mean, so all stop here
                    raise TrainingDivergedError(f"the loss is {trainee.loss} at step {trainee.step}: training "
                                                "diverged; lower optim.lr (or check the data) and run again")
            if log_now:
                now = time.perf_counter()
                record = {"step": trainee.step, "loss": trainee.loss, "lr": trainee.scheduler.get_last_lr()[0],
                          "samples_per_s": interval_steps * cfg.global_batch_size / (now - interval_start),
                          "time": round(time.time(), 3)}
                interval_start, interval_steps = now, 0
                if metrics is not None and progress is not None:
                    metrics.write(record)
                    progress.show(record)
            if save_now:
                writer.save(checkpoint_state(trainee, env.rank), trainee.step, meta)
            if stop:
                writer.close()  # the preemption path waits for its checkpoint
                supervisor.stopped(trainee.step)  # ends the task (JobEnd)
            if trainee.step == cfg.steps:
                break
    writer.check_last()  # a run whose final state could not be saved has not succeeded
    supervisor.finished(trainee.step)
    elapsed = time.perf_counter() - started
    digest = param_digest(trainee.model, staged=pipeline is not None)  # every rank: shards and stages are gathered
    if metrics is None or progress is None:
        return None
    metrics.close()
    progress.close()
    return _write_summary(trainee, plan, env, run_dir, device=device, resumed_from=resumed_from, elapsed_s=elapsed,
                          digest=digest)


class TrainingDivergedError(FloatingPointError):
    """The loss is no longer a number; resuming exactly from the last checkpoint would only repeat it."""


def _step(trainee: Trainee, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    trainee.optimizer.zero_grad(set_to_none=True)
    if trainee.pipeline is not None:
        loss = pipeline_step(trainee.pipeline, inputs, targets)
    else:
        loss = nn.functional.cross_entropy(trainee.model(inputs), targets)
        loss.backward()
    trainee.optimizer.step()
    trainee.scheduler.step()
    trainee.step += 1
    return loss


def _write_summary(trainee: Trainee, plan: JobPlan, env: TaskEnvironment, run_dir: Path, *,
                   device: torch.device, resumed_from: int, elapsed_s: float, digest: str) -> dict[str, Any]:
    steps_run = trainee.step - resumed_from
    summary = {
        "final_loss": trainee.loss,
        "steps": trainee.step,
        "samples_per_s": steps_run * plan.train.global_batch_size / elapsed_s if steps_run else 0.0,
        "param_digest": digest,
        "run_dir": str(run_dir.resolve()),
        "world_size": env.world_size,
        "launcher": env.started_by,  # the key predates TaskEnvironment.started_by; scripts read it
        "backend": dist.get_backend(),
        "device": str(device),
        "resumed_from_step": resumed_from,
        "train_seconds": round(elapsed_s, 3),
        "last_checkpoint": str(last.resolve()) if (last := latest_checkpoint(RunDir(run_dir).checkpoints)) else None,
    }
    write_json(RunDir(run_dir).summary, summary)
    return summary
