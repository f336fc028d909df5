"""The training loop: data-parallel batches, metrics, periodic checkpoints, resume from the newest.

Plain functions around one loop; the strategy, the model and the data are built elsewhere.
"""

import collections
import dataclasses
import hashlib
import math
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.tensor import DTensor

from cluster.rundir import RunDir, write_json
from cluster.runtime.job import Job
from cluster.runtime.loader import EvalLoader, ResumableLoader
from cluster.runtime.rng import seed_everything
from jobs.data import DatasetInfo, describe
from jobs.evaluate import evaluate
from jobs.grad_norm import clip_to, global_grad_norm
from jobs.metrics import MetricsLog, ProgressLine
from jobs.optim import build_optimizer, build_scheduler
from jobs.parallelize import parallelize, sharded_by_fsdp
from jobs.pipeline import gather_places, gather_state, pipeline_step
from jobs.plan import JobPlan
from jobs.precision import Precision, precision_for
from jobs.strategies import gradient_sync, unwrap
from jobs.targets import Target


def build_model(model: Target, data: DatasetInfo) -> nn.Module:
    """The model the config names, sized for the data (``jobs.targets``: sample_shape, num_classes)."""
    built = model.call(sample_shape=data.sample_shape, num_classes=data.num_classes)
    if not isinstance(built, nn.Module):
        raise ValueError(f"model._target_={model.path} returned a {type(built).__name__}, not a torch.nn.Module")
    return built


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


@dataclasses.dataclass
class Trainee:
    """What the loop updates; ``state()`` is what a checkpoint holds (the step is the job's)."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    loss_fn: Callable[..., torch.Tensor]  # (output, target) -> a micro-batch's share of the step's mean loss
    precision: Precision  # where forward and backward run in lower precision, and fp16's loss scaler
    accumulation: int = 1  # forward/backward passes per optimizer step (ParallelDims.accumulation)
    pipeline: Any = None  # this rank's jobs.pipeline.Pipeline, when the model is cut into stages
    grad_clip_norm: float = 0.0  # train.grad_clip_norm (0: no clipping)
    loss: float = float("nan")  # global mean loss of the last logged step
    validation: dict[str, float] | None = None  # val_loss, ... of this run's last evaluation
    grad_norm: torch.Tensor | None = None  # the gradient's global norm before clipping, at the last measured step

    def state(self) -> dict[str, Any]:
        state = {"model": self.model, "optimizer": self.optimizer, "scheduler": self.scheduler, "last_loss": self}
        if self.precision.scaler is not None:
            state["loss_scale"] = self.precision
        return state

    def state_dict(self) -> dict[str, float]:  # the loss of the step a checkpoint holds, for a resumed summary
        return {"loss": self.loss}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.loss = float(state["loss"])


def train(plan: JobPlan, job: Job) -> dict[str, Any] | None:
    """Train to ``plan.train.steps`` and return the summary (rank 0) or None (other ranks).

    At a step boundary where all ranks agreed to stop, every rank saves that step and hands over (``Job``).
    """
    env, device, run_dir = job.env, job.device, job.run_dir
    dims = plan.check_world(env.world_size)
    dp_index, _ = dims.coordinates(env.rank)
    cfg = plan.train
    seed_everything(cfg.seed)  # the same initial model on every rank
    data = describe(plan.data, val_fraction=plan.split.val_fraction)
    criterion = plan.loss.as_loss()  # the configured loss: a batch's mean
    loss_fn = _share_of(criterion, dims.accumulation)  # each forward/backward's share of the step's loss
    precision = precision_for(cfg.precision, device=device, fsdp_sharded=sharded_by_fsdp(plan, dims))
    blocks: collections.Counter[str] = collections.Counter()  # checkpointed, compiled
    model, pipeline = parallelize(build_model(plan.model, data), plan, dims, rank=env.rank, device=device,
                                  prepared=blocks,
                                  sample_shape=data.sample_shape, loss_fn=_stage_loss(loss_fn, precision),
                                  example=data.example)
    optimizer = build_optimizer(plan.optim, model.parameters())
    trainee = Trainee(model, optimizer, build_scheduler(plan.optim, optimizer, total_steps=cfg.steps),
                      loss_fn=loss_fn, precision=precision, accumulation=dims.accumulation, pipeline=pipeline,
                      grad_clip_norm=cfg.grad_clip_norm)
    seed_everything(cfg.seed + 1 + env.rank)  # per-rank streams (dropout, augmentation) from here on
    state = trainee.state()
    resumed_from = job.resume(state)
    places = gather_places(model, pipeline, local_rank=env.local_rank)
    job.record("layout", ranks=places, accumulation=dims.accumulation,  # as it came out, to check against the plan
               micro_batch_size=dims.forward_batch_size, blocks=dict(blocks))  # rank 0's blocks checkpointed, ...

    # The ranks of one pipeline share a replica's batch (the first stage reads the inputs, the last the targets).
    loader = ResumableLoader(data.dataset, dims.replica_batch_size, seed=cfg.seed, replicas=dims.dp,
                             replica=dp_index, num_workers=cfg.num_workers)
    loader.seek(job.step)  # the step says where the data is
    evaluation = None if data.validation is None else EvalLoader(
        data.validation, dims.forward_batch_size, seed=cfg.seed, replicas=dims.dp, replica=dp_index,
        num_workers=cfg.num_workers)

    def validate() -> dict[str, float] | None:
        assert evaluation is not None
        return evaluate(model, pipeline, evaluation, job=job, loss_fn=criterion, precision=precision)

    metrics = MetricsLog(run_dir, resumed_step=resumed_from) if env.is_main else None
    progress = ProgressLine(cfg.steps) if env.is_main else None
    started = interval_start = time.perf_counter()
    interval_steps = 0
    model.train()
    while job.step < cfg.steps:
        for inputs, targets in loader:
            logged_next = _logged(job.step + 1, cfg) or (evaluation is not None and _evaluated(job.step + 1, cfg))
            loss = _step(trainee, inputs.to(device), targets.to(device), measure=logged_next)
            interval_steps += 1
            stop = job.end_step()
            stepped = time.perf_counter()  # the rate counts training, not the evaluation
            evaluated = None
            if evaluation is not None and not stop and _evaluated(job.step, cfg):
                evaluated = trainee.validation = validate()
                if evaluated is None:  # a warning came during it: stop here, as at an agreed step boundary
                    job.record("evaluation-abandoned", step=job.step, reason="a warning signal came during it")
                    stop = True
            log_now = _logged(job.step, cfg) or evaluated is not None
            save_now = stop or job.checkpoint_due() or job.step == cfg.steps
            if log_now or save_now:
                trainee.loss = global_mean(loss, contributors=dims.dp)
                if not math.isfinite(trainee.loss):  # every rank sees the same mean, so all stop here
                    raise TrainingDivergedError(f"the loss is {trainee.loss} at step {job.step}: training "
                                                "diverged; lower optim.lr (or check the data) and run again")
            if log_now:
                record = {"step": job.step, "loss": trainee.loss, "lr": trainee.scheduler.get_last_lr()[0],
                          "grad_norm": trainee.grad_norm.item() if trainee.grad_norm is not None else None,
                          "samples_per_s": interval_steps * cfg.global_batch_size / (stepped - interval_start),
                          "time": round(time.time(), 3)}
                if precision.scaler is not None:
                    record["loss_scale"] = precision.loss_scale()  # halved after each step that overflowed
                record.update(evaluated or {})
                interval_start, interval_steps = time.perf_counter(), 0
                if metrics is not None and progress is not None:
                    metrics.write(record)
                    progress.show(record)
            if save_now:
                job.save(state)
            if stop:
                job.hand_over()  # the preemption path waits for its checkpoint, requeues, ends the task
            if job.step == cfg.steps:
                break
    if evaluation is not None and trainee.validation is None:  # resumed at its last step: the summary's numbers
        trainee.validation = validate()
    job.finish()  # a run whose final state could not be saved has not succeeded
    elapsed = time.perf_counter() - started
    digest = param_digest(trainee.model, staged=pipeline is not None)  # every rank: shards and stages are gathered
    if metrics is None or progress is None:
        return None
    metrics.close()
    progress.close()
    return _write_summary(trainee, job, plan, elapsed_s=elapsed, digest=digest)


class TrainingDivergedError(FloatingPointError):
    """The loss is no longer a number; resuming exactly from the last checkpoint would only repeat it."""


def _logged(step: int, cfg: Any) -> bool:
    """Whether step ``step`` gets a metrics record (``train.log_every_steps``, the first and the last)."""
    return step % cfg.log_every_steps == 0 or step in (1, cfg.steps)


def _evaluated(step: int, cfg: Any) -> bool:
    """Whether the model is evaluated after step ``step`` (``train.eval_every_steps``, and the last)."""
    return bool(cfg.eval_every_steps and step % cfg.eval_every_steps == 0) or step == cfg.steps


def _stage_loss(loss_fn: Callable[..., torch.Tensor], precision: Precision) -> Callable[..., torch.Tensor]:
    """The loss a pipeline's last stage computes inside its schedule (and calls backward on): in fp32, scaled."""
    def loss(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        with precision.full():
            return precision.scale(loss_fn(output.float(), target))

    return loss


def _share_of(loss_fn: Callable[..., torch.Tensor], parts: int) -> Callable[..., torch.Tensor]:
    """The loss of one of ``parts`` equal micro-batches of a step, as a share of the step's mean loss."""
    if parts == 1:
        return loss_fn
    return lambda output, target: loss_fn(output, target) / parts


def _step(trainee: Trainee, inputs: torch.Tensor, targets: torch.Tensor, *, measure: bool) -> torch.Tensor:
    """One optimizer step on this replica's batch, in ``trainee.accumulation`` forward/backward passes whose
    gradients add up (synced over the replicas on the last); the batch's mean loss (0 on a pipeline stage
    without the loss). The gradient's global norm is measured when clipping, or when ``measure``."""
    trainee.optimizer.zero_grad(set_to_none=True)
    precision, parts = trainee.precision, trainee.accumulation
    total = torch.zeros((), device=inputs.device)
    for index, (chunk, target) in enumerate(zip(inputs.chunk(parts), targets.chunk(parts), strict=True)):
        if trainee.pipeline is not None:  # its schedule computes the loss (the same share, scaled)
            with precision.autocast():
                loss = pipeline_step(trainee.pipeline, chunk, target, accumulate=index > 0)
            total += loss / precision.loss_scale()
            continue
        with gradient_sync(trainee.model, enabled=index == parts - 1):
            with precision.autocast():
                output = trainee.model(chunk)
            loss = trainee.loss_fn(output.float(), target)
            precision.scale(loss).backward()
        total += loss.detach()
    precision.unscale(trainee.optimizer)  # fp16: the true gradients, to measure and clip
    if measure or trainee.grad_clip_norm:
        parameters = list(trainee.model.parameters())
        pp_group = trainee.pipeline.pp_group if trainee.pipeline is not None else None
        trainee.grad_norm = global_grad_norm(parameters, pp_group=pp_group)
        if trainee.grad_clip_norm:
            clip_to(parameters, trainee.grad_clip_norm, trainee.grad_norm)
    precision.step(trainee.optimizer)  # fp16: skipped when a rank's gradients overflowed
    trainee.scheduler.step()
    return total


def _write_summary(trainee: Trainee, job: Job, plan: JobPlan, *, elapsed_s: float, digest: str) -> dict[str, Any]:
    steps_run = job.step - job.resumed_from
    summary = {
        "final_loss": trainee.loss,
        "steps": job.step,
        "samples_per_s": steps_run * plan.train.global_batch_size / elapsed_s if steps_run else 0.0,
        "param_digest": digest,
        "run_dir": str(job.run_dir.resolve()),
        "world_size": job.world_size,
        "launcher": job.env.started_by,  # the key predates TaskEnvironment.started_by; scripts read it
        "backend": dist.get_backend(),
        "device": str(job.device),
        "resumed_from_step": job.resumed_from,
        "train_seconds": round(elapsed_s, 3),
        "precision": plan.train.precision,
        **(trainee.validation or {}),  # the last evaluation's val_loss, val_accuracy, val_perplexity
        "last_checkpoint": str(last.resolve()) if (last := job.last_checkpoint()) else None,
    }
    write_json(RunDir(job.run_dir).summary, summary)
    return summary
