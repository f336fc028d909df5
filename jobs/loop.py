"""The training loop: data-parallel batches, metrics, periodic checkpoints, resume from the newest.

Plain functions around one loop; the strategy, the model and the data are built elsewhere.
"""

import dataclasses
import hashlib
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, Sampler

from cluster.checkpoint import (
    SHARED_FILE,
    CheckpointError,
    check_compatible,
    latest_checkpoint,
    load_file,
    prune_checkpoints,
    rank_file,
    read_marker,
    save_checkpoint,
    step_dir,
)
from cluster.environment import TaskEnvironment
from cluster.rng import capture_rng_state, restore_rng_state, seed_everything
from jobs.config import JobPlan
from jobs.data import build_dataset
from jobs.metrics import MetricsLog, ProgressLine
from jobs.models import build_model
from jobs.optim import build_optimizer, build_scheduler
from jobs.strategies import apply_strategy, unwrap

SUMMARY_FILE = "summary.json"


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


@dataclasses.dataclass
class Trainee:
    """What the loop updates and a checkpoint must hold."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    step: int = 0  # optimizer steps completed
    loss: float = float("nan")  # global mean loss of the last logged step


def param_digest(model: nn.Module) -> str:
    """SHA-256 of every parameter and buffer, by name: equal digests mean bit-identical models."""
    digest = hashlib.sha256()
    for name, tensor in sorted(unwrap(model).state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def global_mean(value: torch.Tensor) -> float:
    """The mean of a scalar over all ranks."""
    total = value.detach().clone()
    dist.all_reduce(total)
    return total.item() / dist.get_world_size()


def save(trainee: Trainee, plan: JobPlan, env: TaskEnvironment, root: Path) -> float:
    """Write a checkpoint of the current step with all ranks; returns the seconds it took."""
    started = time.perf_counter()
    shared = None
    if env.is_main:
        shared = {
            "model": unwrap(trainee.model).state_dict(),
            "optimizer": trainee.optimizer.state_dict(),
            "scheduler": trainee.scheduler.state_dict(),
            "step": trainee.step,
            "loss": trainee.loss,
        }
    save_checkpoint(
        root, trainee.step, rank=env.rank, world_size=env.world_size, shared=shared,
        per_rank={"rng": capture_rng_state()}, meta={"config": plan.fingerprint_config()}, barrier=dist.barrier,
    )
    if env.is_main:
        prune_checkpoints(root, plan.train.keep_checkpoints)
    return time.perf_counter() - started


def resume(trainee: Trainee, plan: JobPlan, env: TaskEnvironment, root: Path) -> None:
    """Load the newest complete checkpoint under ``root``, if any, into ``trainee``."""
    folder = latest_checkpoint(root)
    if folder is None:
        return
    marker = read_marker(folder)
    check_compatible(marker.get("config"), plan.fingerprint_config(), folder=folder)
    shared = load_file(folder / SHARED_FILE)
    unwrap(trainee.model).load_state_dict(shared["model"])
    trainee.optimizer.load_state_dict(shared["optimizer"])
    trainee.scheduler.load_state_dict(shared["scheduler"])
    trainee.step, trainee.loss = shared["step"], shared["loss"]
    own = folder / rank_file(env.rank)
    if own.is_file():
        restore_rng_state(load_file(own)["rng"])
    elif marker["world_size"] == env.world_size:
        raise CheckpointError(f"checkpoint {folder} lacks {own.name}; move it away to resume from the one before")
    # else: the world size changed, and this rank had no predecessor: its RNG keeps the fresh seed.


def train(plan: JobPlan, env: TaskEnvironment, device: torch.device, run_dir: Path) -> dict[str, Any] | None:
    """Train to ``plan.train.steps`` and return the summary (rank 0) or None (other ranks)."""
    plan.check_world(env.world_size)
    cfg = plan.train
    seed_everything(cfg.seed)  # the same initial model on every rank
    data = build_dataset(plan.data)
    model = apply_strategy(build_model(plan.model, sample_shape=data.sample_shape, num_classes=data.num_classes),
                           plan.strategy, device=device)
    optimizer = build_optimizer(plan.optim, model.parameters())
    trainee = Trainee(model, optimizer, build_scheduler(plan.optim, optimizer, total_steps=cfg.steps))
    seed_everything(cfg.seed + 1 + env.rank)  # per-rank streams (dropout, augmentation) from here on
    ckpt_root = run_dir / "checkpoints"
    resume(trainee, plan, env, ckpt_root)
    resumed_from = trainee.step

    per_rank_batch = cfg.global_batch_size // env.world_size
    sampler = DistributedSampler(data.dataset, num_replicas=env.world_size, rank=env.rank,
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
        loader = DataLoader(data.dataset, batch_size=per_rank_batch, sampler=SkipFirst(sampler, offset * per_rank_batch),
                            drop_last=True, num_workers=plan.data.num_workers)
        for inputs, targets in loader:
            loss = _step(trainee, inputs.to(device), targets.to(device))
            interval_steps += 1
            log_now = trainee.step % cfg.log_every_steps == 0 or trainee.step in (1, cfg.steps)
            save_now = trainee.step % cfg.checkpoint_every_steps == 0 or trainee.step == cfg.steps
            if log_now or save_now:
                trainee.loss = global_mean(loss)
            if log_now:
                now = time.perf_counter()
                record = {"step": trainee.step, "loss": trainee.loss, "lr": trainee.scheduler.get_last_lr()[0],
                          "samples_per_s": interval_steps * cfg.global_batch_size / (now - interval_start)}
                interval_start, interval_steps = now, 0
                if metrics is not None and progress is not None:
                    metrics.write(record)
                    progress.show(record)
            if save_now:
                save(trainee, plan, env, ckpt_root)
            if trainee.step == cfg.steps:
                break
    elapsed = time.perf_counter() - started
    if metrics is None or progress is None:
        return None
    metrics.close()
    progress.close()
    return _write_summary(trainee, plan, env, run_dir, device=device, resumed_from=resumed_from, elapsed_s=elapsed)


def _step(trainee: Trainee, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    trainee.optimizer.zero_grad(set_to_none=True)
    loss = nn.functional.cross_entropy(trainee.model(inputs), targets)
    loss.backward()
    trainee.optimizer.step()
    trainee.scheduler.step()
    trainee.step += 1
    return loss


def _write_summary(trainee: Trainee, plan: JobPlan, env: TaskEnvironment, run_dir: Path, *,
                   device: torch.device, resumed_from: int, elapsed_s: float) -> dict[str, Any]:
    steps_run = trainee.step - resumed_from
    summary = {
        "final_loss": trainee.loss,
        "steps": trainee.step,
        "samples_per_s": steps_run * plan.train.global_batch_size / elapsed_s if steps_run else 0.0,
        "param_digest": param_digest(trainee.model),
        "run_dir": str(run_dir.resolve()),
        "world_size": env.world_size,
        "launcher": env.launcher,
        "backend": dist.get_backend(),
        "device": str(device),
        "resumed_from_step": resumed_from,
        "train_seconds": round(elapsed_s, 3),
        "last_checkpoint": str(step_dir(run_dir / "checkpoints", trainee.step).resolve()),
    }
    tmp = run_dir / (SUMMARY_FILE + ".tmp")
    tmp.write_text(json.dumps(summary, indent=1) + "\n")
    tmp.replace(run_dir / SUMMARY_FILE)
    return summary
