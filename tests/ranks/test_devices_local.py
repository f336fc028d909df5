"""The local launcher shows each rank its own GPU and nothing else, and a checkpoint crosses between runs
with and without CUDA (no GPU needed: the masks and the RNG states are what is checked)."""

import os
import subprocess
import sys

import pytest

from cluster.local.ranks import launch_local
from tests.helpers import REPO

pytestmark = pytest.mark.slow


def _mask() -> tuple[str, str]:
    return os.environ["SUBMITIT_LOCAL_LOCALID"], os.environ["CUDA_VISIBLE_DEVICES"]


def test_each_local_rank_sees_only_its_own_gpu_of_the_users_mask(tmp_path, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")  # the user's: submitit would show "0,1" instead
    result = launch_local(_write_mask, str(tmp_path), tasks=2, timeout_min=1, log_dir=tmp_path / "logs",
                          devices=("3", "5"))  # what cluster.devices makes of that mask
    assert result == "0:3"  # rank 0's, returned; every rank wrote what it saw
    seen = sorted((tmp_path / name).read_text() for name in ("0", "1"))
    assert seen == ["0:3", "1:5"]


def test_ranks_given_no_gpu_see_none(tmp_path):
    launch_local(_write_mask, str(tmp_path), tasks=2, timeout_min=1, log_dir=tmp_path / "logs")
    assert sorted((tmp_path / name).read_text() for name in ("0", "1")) == ["0:", "1:"]


def _write_mask(folder: str) -> str:
    local, mask = _mask()
    text = f"{local}:{mask}"
    with open(os.path.join(folder, local), "w") as out:
        out.write(text)
    return text


CROSSING = """
import sys, torch
from pathlib import Path
from hydra import compose, initialize_config_dir
import cluster.runtime.job as job_api
from cluster.environment import SINGLE_PROCESS
from jobs.plan import plan_from_config
from jobs.task import run_task

def plan(steps):
    with initialize_config_dir(config_dir=str(Path('conf').resolve()), version_base=None):
        return plan_from_config(compose(config_name='train', overrides=[
            'cluster=debug', 'strategy=single', f'train.steps={steps}', 'train.checkpoint_every_steps=5',
            'train.global_batch_size=32']))

real = job_api.capture_rng_state
def with_cuda():  # what a GPU run's ranks capture besides the CPU's generators
    return {**real(), 'cuda': [torch.zeros(16, dtype=torch.uint8)]}

run_dir = Path(sys.argv[2])
if sys.argv[1] == 'gpu-first':
    job_api.capture_rng_state = with_cuda
run_task(plan(10), run_dir, env=SINGLE_PROCESS)
job_api.capture_rng_state = real if sys.argv[1] == 'gpu-first' else with_cuda
summary = run_task(plan(20), run_dir, env=SINGLE_PROCESS)
print(summary['resumed_from_step'], summary['steps'])
"""


@pytest.mark.parametrize("order", ["cpu-first", "gpu-first"])
def test_a_checkpoint_resumes_across_runs_with_and_without_cuda(tmp_path, order):
    done = subprocess.run([sys.executable, "-c", CROSSING, order, str(tmp_path)], cwd=REPO, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split()[-2:] == ["10", "20"]
