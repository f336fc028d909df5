"""Process groups: backend choice, device binding, teardown; NCCL where a GPU is visible."""

import pytest
import torch
import torch.distributed as dist

from cluster.environment import SINGLE_PROCESS
from cluster.runtime.process_group import process_group, resolve_backend
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


def test_gloo_group_on_cpu_reduces():
    with process_group(SINGLE_PROCESS, backend="gloo", timeout_s=30) as group:
        tensor = torch.ones(3)
        dist.all_reduce(tensor)
        assert group.device == torch.device("cpu") and tensor.tolist() == [1.0, 1.0, 1.0]


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
    run_train("cluster=debug", "train.steps=30", f"hydra.run.dir={tmp_path}")
    summary = read_summary(tmp_path)
    assert (summary["backend"], summary["device"]) == ("nccl", "cuda:0")
    assert summary["final_loss"] < 2.0


@pytest.mark.gpu
@needs_gpu
def test_local_launcher_lets_its_ranks_see_the_gpus(tmp_path):
    run_train("cluster.tasks_per_node=1", "train.steps=30", f"hydra.run.dir={tmp_path}")
    assert (read_summary(tmp_path)["backend"], read_summary(tmp_path)["device"]) == ("nccl", "cuda:0")
