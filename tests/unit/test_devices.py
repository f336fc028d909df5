"""Which GPU each local rank gets and which backend the ranks use, for every machine shape (the machine
faked at its one boundary: the GPU count and the environment)."""

import pytest

from cluster.devices import CPU_RANKS, place_local_ranks, visible_gpus
from cluster.errors import SettingError
from jobs.user_errors import phrase


@pytest.mark.parametrize("gpus", [0, 1, 2, 8])
@pytest.mark.parametrize("ranks", [0, 1, 2, 3, 4, 8])
def test_each_rank_gets_a_gpu_of_its_own_or_all_train_on_the_cpu(gpus, ranks):
    visible = visible_gpus({}, count=lambda: gpus)
    placed = place_local_ranks(ranks=ranks, backend="auto", visible=visible)
    expected_ranks = ranks or gpus or CPU_RANKS
    assert placed.ranks == expected_ranks and len(placed.per_rank) == expected_ranks
    if gpus and expected_ranks <= gpus:
        assert placed.backend == "nccl" and placed.per_rank == tuple(str(i) for i in range(expected_ranks))
        assert len(set(placed.per_rank)) == expected_ranks and not placed.notice  # never two ranks on one GPU
    else:
        assert placed.backend == "gloo" and set(placed.per_rank) == {""}
        assert bool(placed.notice) == bool(gpus)  # a machine with GPUs is told why they are left unused
    if gpus and expected_ranks > gpus:
        assert f"{expected_ranks} rank(s) and {gpus} visible GPU(s): training on the CPU" in phrase(placed.notice)
        assert f"cluster.tasks_per_node={gpus}" in phrase(placed.notice)


def test_the_main_job_on_a_one_gpu_workstation_runs_one_rank_on_the_gpu():
    placed = place_local_ranks(ranks=0, backend="auto", visible=["0"])  # conf/cluster/local.yaml: tasks_per_node 0
    assert (placed.ranks, placed.backend, placed.per_rank) == (1, "nccl", ("0",))


@pytest.mark.parametrize("gpus, ranks", [(0, 1), (1, 2), (2, 3), (8, 9)])
def test_more_nccl_ranks_than_gpus_is_refused_with_the_fix(gpus, ranks):
    with pytest.raises(SettingError) as refused:
        place_local_ranks(ranks=ranks, backend="nccl", visible=[str(i) for i in range(gpus)])
    told = phrase(refused.value.template)
    assert "distributed.backend=nccl" in told and "distributed.backend=gloo" in told
    if gpus:
        assert f"cluster.tasks_per_node={gpus}" in told


def test_gloo_asked_for_keeps_every_rank_on_the_cpu():
    placed = place_local_ranks(ranks=4, backend="gloo", visible=["0", "1", "2", "3"])
    assert placed.backend == "gloo" and set(placed.per_rank) == {""} and not placed.notice


@pytest.mark.parametrize("mask, visible", [
    ("3,5", ["3", "5"]), ("GPU-8f2a,GPU-77c1", ["GPU-8f2a", "GPU-77c1"]), ("", []), ("2,-1,4", ["2"]),
    (" 1 , 0 ", ["1", "0"]),
])
def test_a_users_cuda_visible_devices_is_the_set_of_gpus_in_its_order(mask, visible):
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": mask}, count=lambda: pytest.fail("the mask decides")) == visible
    placed = place_local_ranks(ranks=0, backend="auto", visible=visible)
    assert placed.per_rank == (tuple(visible) if visible else ("",) * CPU_RANKS)


def test_without_a_mask_every_gpu_of_the_machine_is_visible():
    assert visible_gpus({}, count=lambda: 3) == ["0", "1", "2"]
