"""Validation: the model's loss on the validation data, and its accuracy (a label, or a label per position) or
perplexity (a label per position: a language model), each sample evaluated by exactly one rank, once
(``cluster.EvalLoader``), and summed over the ranks. The same numbers on 1 rank or 4, with any strategy.

An evaluation gives way to a warning signal at once: the ranks ask between its batches (``Job.warned``), and
abandon it, so that it does not eat the time left to save.
"""

import math
from collections.abc import Callable

import torch
import torch.distributed as dist
from torch import nn

from cluster.runtime.job import Job
from cluster.runtime.loader import EvalLoader
from jobs.pipeline import Pipeline, pipeline_forward
from jobs.precision import Precision


def per_sample_accuracy(output: torch.Tensor, targets: torch.Tensor) -> torch.Tensor | None:
    """Each sample's share of right answers (its label, or its labels per position); None when the targets are
    not class labels (a regression). The classes are dimension 1, as ``cross_entropy`` has them."""
    if targets.is_floating_point() or output.dim() != targets.dim() + 1:
        return None
    hits = (output.argmax(1) == targets).float()
    return hits.flatten(1).mean(1) if hits.dim() > 1 else hits


def evaluate(model: nn.Module, pipeline: Pipeline | None, loader: EvalLoader, *, job: Job,
             loss_fn: Callable[..., torch.Tensor], precision: Precision) -> dict[str, float] | None:
    """``val_loss``, and ``val_accuracy`` and ``val_perplexity`` where they apply, the same on every rank; None when
    a warning came first. ``loss_fn`` is the configured loss (a batch's mean)."""
    device = job.device
    # [sum of the samples' losses, of their accuracies, samples, samples with an accuracy, samples of sequences]
    sums = torch.zeros(5, dtype=torch.float64, device=device)
    modules = [model, *(pipeline.stages.values() if pipeline is not None else ())]
    for module in modules:
        module.eval()
    try:
        with job.between_steps(), torch.no_grad():
            for inputs, targets, mask in loader:
                if job.warned():
                    return None
                inputs, targets, mask = inputs.to(device), targets.to(device), mask.to(device)
                with precision.autocast():
                    output = pipeline_forward(pipeline, inputs) if pipeline is not None else model(inputs)
                if output is None:  # a pipeline stage before the last: its outputs went on
                    continue
                output, targets = output.float()[mask], targets[mask]
                count = len(targets)
                if not count:  # padding only: this rank's share ended
                    continue
                sums[0] += loss_fn(output, targets).double() * count
                accuracy = per_sample_accuracy(output, targets)
                if accuracy is not None:
                    sums[1] += accuracy.double().sum()
                    sums[3] += count
                sums[2] += count
                sums[4] += count if targets.dim() > 1 else 0
    finally:
        for module in modules:
            module.train()
    dist.all_reduce(sums)
    loss_sum, hits, samples, with_accuracy, sequences = sums.tolist()
    result = {"val_loss": loss_sum / samples}
    if with_accuracy == samples:
        result["val_accuracy"] = hits / samples
    if sequences == samples:
        result["val_perplexity"] = math.exp(min(result["val_loss"], 700.0))  # exp(>709) overflows a float
    return result
