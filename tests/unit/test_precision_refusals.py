"""What a precision needs of the device, refused on the rank with the fix (no GPU here: torch.cuda's answers
are given by the test)."""

import pytest
import torch

from jobs.precision import precision_for


def test_bf16_on_a_gpu_without_bf16_arithmetic_is_refused_with_the_fix(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: including_emulation)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 0))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Tesla V100-SXM2-16GB")
    with pytest.raises(ValueError) as refused:
        precision_for("bf16", device=torch.device("cuda", 0), fsdp_sharded=False)
    assert str(refused.value) == ("train.precision=bf16: Tesla V100-SXM2-16GB (compute capability 7.0) has no bf16 "
                                  "arithmetic, which needs 8.0 (Ampere) or newer; use train.precision=fp16 on it")


def test_bf16_on_the_cpu_is_allowed():
    assert precision_for("bf16", device=torch.device("cpu"), fsdp_sharded=False).name == "bf16"
