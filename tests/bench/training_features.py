"""What the training switches cost and save, measured side by side in one process on the built-in gpt:
bf16 against fp32 (step time), activation checkpointing (activation memory and step time), torch.compile
(time to the first step, steady step time); on a GPU also tokens/s and the model FLOPs utilisation.

The variants run in alternating blocks of ``--block`` steps on one machine, so neighbouring blocks see the
same load; each row is the median over the cycles of (baseline block time / variant block time): above 1 the
variant is faster. Activation memory is what autograd keeps for backward (the bytes of every tensor saved,
through ``torch.autograd.graph.saved_tensors_hooks``: exact on any device), and on a GPU the peak allocated.

    python -m tests.bench.training_features --cycles 5            # CPU, small
    python -m tests.bench.training_features --device cuda --dim 768 --depth 12 --seq-len 1024 --batch 16
"""

import argparse
import contextlib
import statistics
import time
from collections.abc import Callable, Iterator

import torch
from torch import nn

from jobs.models import gpt
from jobs.strategies import checkpoint_blocks, compile_blocks

# bf16 dense peak of the GPUs we are lent (TFLOP/s, from the vendors' sheets), for the utilisation
PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0}


def build(args: argparse.Namespace, *, checkpointed: bool = False, compiled: bool = False) -> nn.Module:
    torch.manual_seed(0)  # every variant starts from the same weights
    model = gpt((args.seq_len,), 256, dim=args.dim, depth=args.depth, heads=args.heads).to(args.device)
    if checkpointed:
        checkpoint_blocks(model)
    if compiled:
        compile_blocks(model)
    return model


def batches(args: argparse.Namespace) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(1)
    while True:
        window = torch.randint(256, (args.batch, args.seq_len + 1), generator=generator).to(args.device)
        yield window[:, :-1], window[:, 1:]


def stepper(model: nn.Module, args: argparse.Namespace, dtype: torch.dtype | None) -> Callable[[], float]:
    """One optimizer step at a time (fp32, or autocast to ``dtype``); each call returns its seconds."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    data = batches(args)

    def step() -> float:
        inputs, targets = next(data)
        started = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        context = torch.autocast(args.device, dtype=dtype) if dtype else contextlib.nullcontext()
        with context:
            loss = nn.functional.cross_entropy(model(inputs).float(), targets)
        loss.backward()
        optimizer.step()
        if args.device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - started

    return step


def side_by_side(steps: dict[str, Callable[[], float]], args: argparse.Namespace) -> dict[str, list[float]]:
    """Blocks of each variant in turn; per cycle, the first variant's block time over each one's."""
    for step in steps.values():  # warm-up (and, for a compiled model, its compilation)
        for _ in range(2):
            step()
    ratios: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(args.cycles):
        times = {name: sum(step() for _ in range(args.block)) for name, step in steps.items()}
        baseline = next(iter(times.values()))
        for name, seconds in times.items():
            ratios[name].append(baseline / seconds)
    return ratios


def saved_bytes(model: nn.Module, args: argparse.Namespace) -> int:
    """Bytes autograd keeps for one forward's backward (tensors sharing storage counted once)."""
    seen: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        seen[storage.data_ptr()] = storage.nbytes()
        return tensor

    inputs, targets = next(batches(args))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        loss = nn.functional.cross_entropy(model(inputs), targets)
    loss.backward()
    return sum(seen.values())


def peak_bytes(model: nn.Module, args: argparse.Namespace) -> int | None:
    if args.device != "cuda":
        return None
    step = stepper(model, args, None)
    step()
    torch.cuda.reset_peak_memory_stats()
    step()
    return torch.cuda.max_memory_allocated()


def row(name: str, ratios: list[float]) -> str:
    quartiles = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else [ratios[0]] * 3
    return f"{name:<44} {statistics.median(ratios):6.3f}  ({quartiles[0]:.3f}-{quartiles[2]:.3f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--block", type=int, default=3, help="steps per block")
    parser.add_argument("--cycles", type=int, default=5)
    parser.add_argument("--no-compile", action="store_true", help="leave torch.compile out (it takes a while)")
    args = parser.parse_args()
    print(f"gpt dim {args.dim}, depth {args.depth}, {args.batch} x {args.seq_len} tokens a step, on {args.device}; "
          f"{args.cycles} cycles of {args.block} steps")

    plain, checkpointed = build(args), build(args, checkpointed=True)
    print("\nactivation memory (bytes saved for backward, one step):")
    kept, recomputed = saved_bytes(plain, args), saved_bytes(checkpointed, args)
    print(f"  plain {kept / 2**20:.1f} MiB, checkpointed {recomputed / 2**20:.1f} MiB: {kept / recomputed:.2f}x less")
    peaks = peak_bytes(plain, args), peak_bytes(checkpointed, args)
    if peaks[0] and peaks[1]:
        print(f"  peak allocated: plain {peaks[0] / 2**20:.0f} MiB, checkpointed {peaks[1] / 2**20:.0f} MiB")

    print("\nstep time, baseline / variant (above 1: the variant is faster):")
    ratios = side_by_side({"fp32": stepper(plain, args, None),
                           "bf16 (autocast)": stepper(build(args), args, torch.bfloat16),
                           "fp32, activation checkpointing": stepper(checkpointed, args, None)}, args)
    for name, values in list(ratios.items())[1:]:
        print(row(f"fp32 / {name}", values))

    if not args.no_compile:
        compiled = build(args, compiled=True)
        step = stepper(compiled, args, None)
        first = step()
        print(f"\ntorch.compile: first step {first:.1f} s (compiling), an eager step "
              f"{stepper(build(args), args, None)():.3f} s")
        ratios = side_by_side({"eager": stepper(build(args), args, None), "compiled": step}, args)
        print(row("eager / compiled (steady)", ratios["compiled"]))

    if args.device == "cuda":
        model, step = build(args), None
        step = stepper(model, args, torch.bfloat16)
        for _ in range(3):
            step()
        seconds = statistics.median(step() for _ in range(10))
        tokens = args.batch * args.seq_len
        parameters = sum(p.numel() for p in model.parameters())
        # 6 N per token for the matmuls forward and backward, plus attention's 12 x depth x dim x length
        flops = tokens * (6 * parameters + 12 * args.depth * args.dim * args.seq_len)
        name = torch.cuda.get_device_name()
        peak = next((value for key, value in PEAK_TFLOPS.items() if key in name), None)
        utilisation = f", MFU {flops / seconds / (peak * 1e12):.1%} of {peak:.0f} TFLOP/s bf16" if peak else ""
        print(f"\n{name}: bf16 {tokens / seconds:,.0f} tokens/s{utilisation}")


if __name__ == "__main__":
    main()
