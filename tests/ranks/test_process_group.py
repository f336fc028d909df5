"""Process groups: backend choice, device binding, teardown; NCCL where a GPU is visible."""

import dataclasses
import json
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from cluster.environment import SINGLE_PROCESS
from cluster.errors import SettingError
from cluster.runtime.process_group import bind_device, process_group, resolve_backend
from tests.gloo_ranks import free_port
from tests.helpers import read_summary, run_train

needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device visible")


def test_auto_backend_is_nccl_with_a_gpu_and_gloo_without():
    assert resolve_backend("auto", cuda_available=True) == "nccl"
    assert resolve_backend("auto", cuda_available=False) == "gloo"
    assert resolve_backend("gloo", cuda_available=True) == "gloo"


def test_nccl_without_a_gpu_is_refused_with_the_fix():
    with pytest.raises(ValueError, match="use backend=gloo or auto"):
        resolve_backend("nccl", cuda_available=False)


def test_group_is_torn_down_even_when_the_body_raises():
    with pytest.raises(RuntimeError, match="boom"):
        with process_group(SINGLE_PROCESS, backend="gloo", timeout_s=30):
            assert dist.is_initialized()
            raise RuntimeError("boom")
    assert not dist.is_initialized()


def _reduce_in_a_group(rank: int, port: int, world_size: int, out: str) -> None:
    env = dataclasses.replace(SINGLE_PROCESS, started_by="torchrun", rank=rank, local_rank=rank,
                              world_size=world_size, master_port=port)
    with process_group(env, backend="auto", timeout_s=30) as group:
        tensor = torch.full((3,), float(rank + 1))
        dist.all_reduce(tensor)
        Path(out, f"rank-{rank}").write_text(f"{group.backend} {group.device} {tensor.tolist()}")


def test_a_gloo_group_of_two_ranks_on_cpu_sums_both_ranks_tensors(tmp_path):
    mp.spawn(_reduce_in_a_group, args=(free_port(), 2, str(tmp_path)), nprocs=2, join=True)
    assert [(tmp_path / f"rank-{r}").read_text() for r in (0, 1)] == ["gloo cpu [3.0, 3.0, 3.0]"] * 2


def test_each_local_rank_is_bound_to_its_own_gpu(monkeypatch):
    """Without a GPU in the machine: the binding rule, with CUDA's answers replaced."""
    bound = []
    monkeypatch.setattr(torch.cuda, "set_device", bound.append)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    for local_rank in range(4):
        env = dataclasses.replace(SINGLE_PROCESS, rank=4 + local_rank, local_rank=local_rank, world_size=8,
                                  node_rank=1, num_nodes=2)
        assert bind_device(env, "nccl") == torch.device("cuda", local_rank)
    assert bound == [0, 1, 2, 3]
    assert bind_device(env, "gloo") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)  # one GPU per task, as --gpus-per-task gives
    assert bind_device(env, "nccl") == torch.device("cuda", 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(SettingError, match="local rank 3 needs GPU 3 but only 2 are visible"):
        bind_device(env, "nccl")


@pytest.mark.gpu
@needs_gpu
def test_nccl_group_binds_the_local_ranks_gpu_and_reduces():
    with process_group(SINGLE_PROCESS, backend="auto", timeout_s=60) as group:
        assert group.backend == "nccl" and group.device == torch.device("cuda", 0)
        assert torch.cuda.current_device() == 0
        tensor = torch.ones(3, device=group.device)
        dist.all_reduce(tensor)
        assert tensor.sum().item() == 3.0


@pytest.mark.gpu
@needs_gpu
def test_training_runs_on_the_gpu_with_nccl(tmp_path):
    run_train("cluster=debug", "train.steps=100", f"hydra.run.dir={tmp_path}")
    summary = read_summary(tmp_path)
    assert (summary["backend"], summary["device"]) == ("nccl", "cuda:0")
    first = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[0])["loss"]
    assert summary["final_loss"] < first / 2, (first, summary["final_loss"])  # it learnt, on the GPU


@pytest.mark.gpu
@needs_gpu
def test_local_launcher_lets_its_ranks_see_the_gpus(tmp_path):
    run_train("cluster.tasks_per_node=1", "train.steps=30", f"hydra.run.dir={tmp_path}")
    assert (read_summary(tmp_path)["backend"], read_summary(tmp_path)["device"]) == ("nccl", "cuda:0")
