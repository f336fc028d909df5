"""The GPU path, on a machine with CUDA (skipped elsewhere, with the reason): NCCL, DDP and FSDP steps,
bf16 autocast, the stop vote on CUDA, an exact resume on the GPU, and a pipeline across 2 GPUs.

Run them all, with a benchmark, by ``tests/gpu/check.sh``.
"""

import json
import os
import socket
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from tests.helpers import REPO, read_summary, run_train

GPUS = torch.cuda.device_count()
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(GPUS == 0, reason="no CUDA device visible")]
two_gpus = pytest.mark.skipif(GPUS < 2, reason="one GPU visible: a pipeline across two GPUs needs two")
# cuBLAS picks its reduction order by workspace; a fixed one makes a GPU run repeat itself bit for bit.
DETERMINISTIC = {"CUBLAS_WORKSPACE_CONFIG": ":4096:8"}
SHORT = ("train.steps=40", "train.checkpoint_every_steps=20", "train.log_every_steps=10")


def gpu_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "CUDA_VISIBLE_DEVICES"}
    return {**env, **DETERMINISTIC, **extra}


def test_the_main_job_trains_one_rank_per_gpu_over_nccl(tmp_path):
    run_train(*SHORT, f"hydra.run.dir={tmp_path}", env=gpu_env())
    summary = read_summary(tmp_path)
    assert (summary["backend"], summary["world_size"]) == ("nccl", GPUS)
    assert summary["device"] == "cuda:0"  # each rank sees only its own GPU, as device 0


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_a_gpu_run_resumes_exactly(tmp_path, strategy):
    whole, split = tmp_path / "whole", tmp_path / "split"
    run_train(f"strategy={strategy}", *SHORT, f"hydra.run.dir={whole}", env=gpu_env())
    run_train(f"strategy={strategy}", *SHORT[1:], "train.steps=20", f"hydra.run.dir={split}", env=gpu_env())
    run_train(f"strategy={strategy}", *SHORT, f"hydra.run.dir={split}", env=gpu_env())
    assert read_summary(split)["resumed_from_step"] == 20
    assert read_summary(split)["param_digest"] == read_summary(whole)["param_digest"]


def test_a_cpu_checkpoint_resumes_on_the_gpu_and_back(tmp_path):
    run_train("cluster.tasks_per_node=1", *SHORT[1:], "train.steps=20", f"hydra.run.dir={tmp_path}",
              env={**gpu_env(), "CUDA_VISIBLE_DEVICES": ""})
    run_train("cluster.tasks_per_node=1", *SHORT, f"hydra.run.dir={tmp_path}", env=gpu_env())
    assert read_summary(tmp_path)["device"] == "cuda:0" and read_summary(tmp_path)["resumed_from_step"] == 20
    run_train("cluster.tasks_per_node=1", *SHORT[1:], "train.steps=60", f"hydra.run.dir={tmp_path}",
              env={**gpu_env(), "CUDA_VISIBLE_DEVICES": ""})
    assert read_summary(tmp_path)["device"] == "cpu" and read_summary(tmp_path)["steps"] == 60


def test_more_nccl_ranks_than_gpus_are_refused_before_any_rank_starts(tmp_path):
    result = run_train(f"cluster.tasks_per_node={GPUS + 1}", "distributed.backend=nccl", f"hydra.run.dir={tmp_path}",
                       check=False, env=gpu_env())
    assert result.returncode == 2 and f"cluster.tasks_per_node={GPUS}" in result.stderr, result.stderr


def test_more_auto_ranks_than_gpus_train_on_the_cpu_with_a_notice(tmp_path):
    result = run_train(f"cluster.tasks_per_node={GPUS + 1}", "train.steps=10", f"hydra.run.dir={tmp_path}",
                       env=gpu_env())
    assert "notice:" in result.stderr and read_summary(tmp_path)["backend"] == "gloo"


def test_a_users_mask_is_respected(tmp_path):
    last = str(GPUS - 1)
    run_train("train.steps=10", f"hydra.run.dir={tmp_path}", env={**gpu_env(), "CUDA_VISIBLE_DEVICES": last})
    summary = read_summary(tmp_path)
    assert summary["world_size"] == 1 and summary["backend"] == "nccl"
    layout = next(json.loads(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()
                  if json.loads(line)["event"] == "layout")
    assert layout["ranks"][0]["local_rank"] == 0


def test_bf16_autocast_trains_a_ddp_step_on_the_gpu():
    code = """
import torch, torch.distributed as dist
from torch import nn
from cluster.environment import SINGLE_PROCESS
from cluster.runtime.process_group import process_group
with process_group(SINGLE_PROCESS, backend='nccl', timeout_s=60) as group:
    model = nn.parallel.DistributedDataParallel(nn.Linear(64, 10).to(group.device), device_ids=[group.device.index])
    with torch.autocast('cuda', dtype=torch.bfloat16):
        out = model(torch.randn(8, 64, device=group.device))
    assert out.dtype == torch.bfloat16
    out.float().sum().backward()
    assert model.module.weight.grad.dtype == torch.float32 and torch.isfinite(model.module.weight.grad).all()
print('ok')
"""
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.stdout.strip() == "ok", done.stderr


def _vote(rank: int, world: int, port: int, out) -> None:
    from cluster.runtime.stop_vote import StopVote
    from cluster.warning_signals import StopFlag

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.cuda.set_device(rank)
    dist.init_process_group("nccl", rank=rank, world_size=world)
    flag = StopFlag(("USR2",))
    vote = StopVote(flag, torch.device("cuda", rank), interval_s=0.0)
    stopped = None
    for step in range(1, 200):
        if rank == world - 1 and step == 50:
            flag.received = "USR2"  # only the last rank got the warning
        if vote.poll(step):
            stopped = step
            break
    vote.close()
    out.put((rank, stopped))
    dist.destroy_process_group()


def test_the_stop_vote_agrees_on_cuda():
    world = min(GPUS, 2)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    context = mp.get_context("spawn")
    out = context.Queue()
    processes = [context.Process(target=_vote, args=(rank, world, port, out)) for rank in range(world)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(120)
    results = dict(out.get(timeout=10) for _ in range(world))
    assert len(set(results.values())) == 1 and 50 < next(iter(results.values())) <= 53, results


@two_gpus
def test_a_pipeline_across_two_gpus_matches_one_process(tmp_path):
    common = ("model=transformer", "train.steps=20", "train.global_batch_size=32", "train.checkpoint_every_steps=20")
    run_train(*common, "strategy=pipeline", "strategy.microbatches=4", "cluster.tasks_per_node=2",
              f"hydra.run.dir={tmp_path / 'pp'}", env=gpu_env())
    run_train(*common, "strategy=single", "cluster.tasks_per_node=1", f"hydra.run.dir={tmp_path / 'one'}",
              env=gpu_env())
    assert read_summary(tmp_path / "pp")["backend"] == "nccl"
    pp, one = read_summary(tmp_path / "pp")["final_loss"], read_summary(tmp_path / "one")["final_loss"]
    assert abs(pp - one) < 1e-3 * max(1.0, abs(one))
