"""Mixed precision (``train.precision``): where the lower precision is applied, and fp16's loss scaling.

fp32 weights stay the master copy whatever the precision: the optimizer updates them and checkpoints hold them.
- Where FSDP2 shards the model (strategy=fsdp, hybrid with replicate=fsdp), its ``MixedPrecisionPolicy`` casts
  the gathered parameters to the lower precision for forward and backward, and reduces gradients in fp32.
- Everywhere else (single, ddp, pipeline, hybrid with replicate=ddp) ``torch.autocast`` runs each op in the
  precision it is safe in (matmuls low, reductions and norms fp32).
- The loss is computed in fp32 from the model's output; pipeline stages hand fp32 activations to each other.
- fp16 (5 exponent bits) needs its loss scaled so that small gradients do not flush to zero: a gradient scaler
  multiplies the loss, divides the gradients back, and skips a step whose gradients overflowed on any rank
  (halving its scale), all ranks alike. Its scale is part of every checkpoint. bf16 needs none.
"""

import contextlib
import dataclasses
import warnings
from typing import Any

import torch
from torch import nn
from torch.distributed.fsdp import MixedPrecisionPolicy
from torch.distributed.fsdp.sharded_grad_scaler import ShardedGradScaler

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def fsdp_policy(precision: str) -> MixedPrecisionPolicy:
    """FSDP2's policy: parameters gathered in the lower precision, gradients reduced in fp32."""
    return MixedPrecisionPolicy(param_dtype=_DTYPES.get(precision), reduce_dtype=torch.float32)


def fp32_outputs(stage: nn.Module) -> nn.Module:
    """``stage`` handing fp32 activations on (to the next pipeline stage, or to the loss): what each stage sends
    and expects is then the same at every precision, as ``jobs.pipeline`` lays out the stages' buffers in fp32."""
    def to_fp32(_module: nn.Module, _inputs: Any, output: Any) -> Any:
        if isinstance(output, torch.Tensor):
            return output.float()
        if isinstance(output, (tuple, list)):
            return type(output)(t.float() if isinstance(t, torch.Tensor) and t.is_floating_point() else t
                                for t in output)
        return output

    stage.register_forward_hook(to_fp32)
    return stage


@dataclasses.dataclass
class Precision:
    """How a rank runs its forward and backward passes at ``train.precision``."""

    name: str  # fp32, bf16 or fp16
    device: torch.device
    autocast_ops: bool  # autocast's job here (False where FSDP2's policy casts)
    scaler: ShardedGradScaler | None = None  # fp16 only

    def autocast(self) -> contextlib.AbstractContextManager[None]:
        if self.name == "fp32" or not self.autocast_ops:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=_DTYPES[self.name])

    def full(self) -> contextlib.AbstractContextManager[None]:
        """fp32 inside an autocast region: the loss, as a pipeline's schedule computes it inside one."""
        if self.name == "fp32" or not self.autocast_ops:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, enabled=False)

    def scale(self, loss: torch.Tensor) -> torch.Tensor:
        """The loss to call ``backward`` on."""
        return self.scaler.scale(loss) if self.scaler is not None else loss

    def loss_scale(self) -> float:
        """What ``scale`` multiplies by now (1 without a scaler)."""
        return self.scaler.get_scale() if self.scaler is not None else 1.0

    def unscale(self, optimizer: torch.optim.Optimizer) -> None:
        """Divide the gradients back to their true size (before they are measured or clipped)."""
        if self.scaler is not None:
            self.scaler.unscale_(optimizer)

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        """The optimizer's step, skipped by the scaler when any rank's gradients overflowed."""
        if self.scaler is None:
            optimizer.step()
            return
        self.scaler.step(optimizer)
        self.scaler.update()

    def state_dict(self) -> dict[str, float]:
        """The scaler's state, for a checkpoint (fp16 runs only: ``jobs.loop.Trainee.state``)."""
        assert self.scaler is not None
        state = self.scaler.state_dict()
        return {"scale": float(state["scale"]), "growth_tracker": int(state["_growth_tracker"])}

    def load_state_dict(self, state: dict[str, float]) -> None:
        assert self.scaler is not None
        self.scaler.load_state_dict({**self.scaler.state_dict(), "scale": float(state["scale"]),
                                     "_growth_tracker": int(state["growth_tracker"])})


def precision_for(name: str, *, device: torch.device, fsdp_sharded: bool) -> Precision:
    """The precision ``name`` on ``device``; ``fsdp_sharded``: FSDP2's policy casts instead of autocast."""
    if name == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported(including_emulation=False):
        major, minor = torch.cuda.get_device_capability(device)
        raise ValueError(f"train.precision=bf16: {torch.cuda.get_device_name(device)} (compute capability "
                         f"{major}.{minor}) has no bf16 arithmetic, which needs 8.0 (Ampere) or newer; use "
                         "train.precision=fp16 on it")
    scaler = None
    if name == "fp16":
        # The scaler's inf check is summed over all ranks (its default group): shards and stages skip together.
        scaler = ShardedGradScaler(device.type)
        scaler.scale(torch.zeros((), device=device))  # its scale made now: a stage without the loss never scales
        # A skipped first step makes torch warn that the schedule stepped before the optimizer: here the schedule
        # counts steps, skipped or not, as intended.
        warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler\.step\(\)` before")
        # Its inf flag and scale are 1-element tensors, which DTensor replicates against FSDP's sharded gradients
        # (what is wanted), with a warning in every rank's log at every step.
        warnings.filterwarnings("ignore", message="Found a non-scalar tensor with numel=1 and ndim!=0")
    return Precision(name, device, autocast_ops=not fsdp_sharded, scaler=scaler)

