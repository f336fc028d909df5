"""Pipeline step time against its ideal, for m micro-batches over p stages (gloo, one CPU core per stage).

A balanced pipeline of p stages fed m micro-batches takes (m + p - 1) stage-times per step: the bubble
is (p - 1) / (m + p - 1) of it. For each m this measures, in the same processes and run:

- the stage time: each rank's stage alone, forward and backward of one micro-batch (the slowest rank's),
- the step time: torch's schedule over the plan's cut (jobs.pipeline), the whole batch (rank 0 starts
  first and finishes last); m < p runs GPipe, since 1F1B needs m >= p,

and prints the ideal step (m + p - 1) x stage time, the efficiency ideal / measured (goal >= 0.90),
and the measured bubble 1 - m x stage time / step time next to (p - 1) / (m + p - 1). Medians of
``--repeats`` steps, with the spread (min-max) of the step times.

    python -m tests.bench.pipeline_bubble                       # p = 2, m = 1 2 4 8, 1F1B
    python -m tests.bench.pipeline_bubble --schedule gpipe --batch 512
"""

import argparse
import statistics
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.distributed.pipelining import PipelineStage

from cluster.parallel_dims import ParallelDims
from cluster.runtime.rng import seed_everything
from jobs.data import DatasetInfo
from jobs.loop import build_model
from jobs.pipeline import (
    Pipeline,
    pipeline_step,
    schedule_class,
    split_stages,
    stage_boundaries,
)
from jobs.plan import stage_layers
from jobs.targets import Target
from tests.gloo_ranks import spawn_gloo_ranks


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stages", type=int, default=2, help="p: pipeline ranks (one CPU core each)")
    parser.add_argument("--microbatches", type=int, nargs="+", default=[1, 2, 4, 8], help="the values of m")
    parser.add_argument("--batch", type=int, default=128, help="global batch (fixed; micro-batches are batch/m)")
    parser.add_argument("--schedule", default="1f1b", choices=["gpipe", "1f1b"])
    parser.add_argument("--dim", type=int, default=128, help="transformer width")
    parser.add_argument("--depth", type=int, default=6, help="transformer blocks")
    parser.add_argument("--tokens", type=int, default=32, help="sequence length (image rows)")
    parser.add_argument("--repeats", type=int, default=15, help="timed steps per m (after 3 warm-up steps)")
    return parser.parse_args()


def stage_time(local: nn.Module, boundary_in: tuple[torch.Tensor, ...], boundary_out: tuple[torch.Tensor, ...], *,
               is_last: bool, targets: torch.Tensor, repeats: int) -> float:
    """Median seconds of this rank's stage alone: forward and backward of one micro-batch (``stage_boundaries``:
    the tensors entering and leaving it)."""
    times = []
    for _ in range(repeats + 3):
        inputs = [torch.randn_like(tensor).requires_grad_(tensor.requires_grad) for tensor in boundary_in]
        began = time.perf_counter()
        outputs = local(*inputs)
        if is_last:
            nn.functional.cross_entropy(outputs, targets).backward()
        else:
            outputs.backward(torch.randn_like(boundary_out[0]))
        times.append(time.perf_counter() - began)
        local.zero_grad(set_to_none=True)
    return statistics.median(times[3:])


def measure(rank: int, args: argparse.Namespace, results: dict) -> None:
    torch.set_num_threads(1)
    model_cfg = Target("model", "jobs.models.transformer", {"dim": args.dim, "depth": args.depth, "heads": 4})
    sample_shape = (1, args.tokens, args.tokens)
    pp_group = dist.new_group(list(range(args.stages)))
    for m in args.microbatches:
        # The plan's cut; its check (m >= p) would refuse m = 1, which is measured here on purpose.
        dims = ParallelDims(world_size=args.stages, dp=1, pp=args.stages, microbatches=max(m, args.stages),
                            layers=stage_layers(model_cfg))
        seed_everything(0)
        stages = split_stages(build_model(model_cfg, DatasetInfo(None, sample_shape, 10)), dims)
        boundaries = stage_boundaries(stages, torch.zeros(args.batch // m, *sample_shape))
        local = stages[rank]
        runner = PipelineStage(local, rank, args.stages, torch.device("cpu"), group=pp_group,
                               input_args=boundaries[rank], output_args=boundaries[rank + 1])
        schedule = schedule_class(args.schedule if m >= args.stages else "gpipe")
        pipeline = Pipeline(schedule(runner, n_microbatches=m, loss_fn=nn.functional.cross_entropy),
                            is_first=rank == 0, is_last=rank == args.stages - 1, pp_group=pp_group, pp_ranks=[],
                            dp_ranks=[])
        targets = torch.randint(0, 10, (args.batch,))
        dist.barrier()
        alone = stage_time(local, boundaries[rank], boundaries[rank + 1], is_last=pipeline.is_last,
                           targets=targets[: args.batch // m], repeats=args.repeats)
        slowest = [0.0] * args.stages
        dist.all_gather_object(slowest, alone)
        steps = []
        for _ in range(args.repeats + 3):
            inputs = torch.randn(args.batch, *sample_shape)
            dist.barrier()
            began = time.perf_counter()
            pipeline_step(pipeline, inputs, targets)
            steps.append(time.perf_counter() - began)
            local.zero_grad(set_to_none=True)
        if rank == 0:
            results[m] = (max(slowest), steps[3:])


def main() -> None:
    args = parse_args()
    results = mp.Manager().dict()
    spawn_gloo_ranks(measure, args, results, world_size=args.stages)
    p = args.stages
    print(f"pipeline bubble: p={p} stages, schedule {args.schedule}, global batch {args.batch}, transformer "
          f"dim {args.dim} depth {args.depth} tokens {args.tokens}, gloo/CPU 1 thread per rank, "
          f"{args.repeats} steps each (torch {torch.__version__})")
    print(f"{'m':>3} {'micro':>5} {'stage ms':>9} {'ideal ms':>9} {'step ms':>9} {'spread ms':>13} "
          f"{'efficiency':>10} {'bubble':>7} {'ideal bubble':>12}")
    for m in args.microbatches:
        stage, steps = results[m]
        step = statistics.median(steps)
        ideal = (m + p - 1) * stage
        print(f"{m:>3} {args.batch // m:>5} {stage * 1e3:>9.1f} {ideal * 1e3:>9.1f} {step * 1e3:>9.1f} "
              f"{min(steps) * 1e3:>6.1f}-{max(steps) * 1e3:<6.1f} {ideal / step:>10.3f} "
              f"{1 - m * stage / step:>7.3f} {(p - 1) / (m + p - 1):>12.3f}")


if __name__ == "__main__":
    main()
