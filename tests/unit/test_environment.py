import pytest

from cluster.environment import (
    PORT_RANGE,
    SINGLE_PROCESS,
    HalfSetEnvironmentError,
    derive_master_port,
    detect_environment,
)

SLURM_RANK3 = {  # rank 3 of a 2 nodes x 2 tasks job, as seen on the local cluster
    "SLURM_JOB_ID": "18", "SLURM_STEP_ID": "0", "SLURM_PROCID": "3", "SLURM_LOCALID": "1", "SLURM_NTASKS": "4",
    "SLURM_NODEID": "1", "SLURM_JOB_NUM_NODES": "2", "SLURM_JOB_NODELIST": "node[1-2]", "SLURM_RESTART_COUNT": "1",
}
TORCHRUN_RANK1 = {
    "TORCHELASTIC_RUN_ID": "abc", "RANK": "1", "LOCAL_RANK": "1", "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2",
    "GROUP_RANK": "0", "GROUP_WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500",
}
LOCAL_RANK1 = {
    "SUBMITIT_LOCAL_JOB_ID": "4242", "SUBMITIT_LOCAL_GLOBALID": "1", "SUBMITIT_LOCAL_LOCALID": "1",
    "SUBMITIT_LOCAL_NTASKS": "2", "SUBMITIT_LOCAL_NODEID": "0", "SUBMITIT_LOCAL_JOB_NUM_NODES": "1",
}


def test_slurm_step_gives_ranks_and_first_node_as_master():
    env = detect_environment(SLURM_RANK3)
    assert (env.started_by, env.rank, env.local_rank, env.world_size, env.node_rank, env.num_nodes) == (
        "slurm", 3, 1, 4, 1, 2)
    assert env.master_addr == "node1"
    assert env.master_port == derive_master_port("18")
    assert (env.job_id, env.restart_count) == ("18", 1)


def test_user_set_master_addr_and_port_win():
    env = detect_environment({**SLURM_RANK3, "MASTER_ADDR": "10.0.0.5", "MASTER_PORT": "12345"})
    assert (env.master_addr, env.master_port) == ("10.0.0.5", 12345)


def test_batch_shell_without_step_is_a_single_process():
    batch_shell = {k: v for k, v in SLURM_RANK3.items() if k != "SLURM_STEP_ID"}
    assert detect_environment(batch_shell) == SINGLE_PROCESS


def test_torchrun():
    env = detect_environment(TORCHRUN_RANK1)
    assert (env.started_by, env.rank, env.local_rank, env.world_size, env.num_nodes) == ("torchrun", 1, 1, 2, 1)
    assert (env.master_addr, env.master_port) == ("127.0.0.1", 29500)


def test_torchrun_inside_an_srun_step_owns_the_ranks():
    env = detect_environment({**SLURM_RANK3, **TORCHRUN_RANK1})
    assert env.started_by == "torchrun" and env.world_size == 2


def test_slurm_comes_before_the_local_executor():
    assert detect_environment({**LOCAL_RANK1, **SLURM_RANK3}).started_by == "slurm"


def test_submitit_local_executor():
    env = detect_environment(LOCAL_RANK1)
    assert (env.started_by, env.rank, env.world_size, env.master_addr) == ("local", 1, 2, "127.0.0.1")
    assert env.master_port == derive_master_port("4242")


def test_nothing_set_is_a_single_process():
    assert detect_environment({}) == SINGLE_PROCESS


@pytest.mark.parametrize("source, dropped", [
    (SLURM_RANK3, "SLURM_PROCID"), (SLURM_RANK3, "SLURM_JOB_NODELIST"),
    (TORCHRUN_RANK1, "WORLD_SIZE"), (LOCAL_RANK1, "SUBMITIT_LOCAL_NTASKS"),
])
def test_half_set_environment_raises_naming_what_is_missing(source, dropped):
    environ = {k: v for k, v in source.items() if k != dropped}
    with pytest.raises(HalfSetEnvironmentError, match=dropped):
        detect_environment(environ)


def test_inconsistent_ranks_raise():
    with pytest.raises(HalfSetEnvironmentError, match="rank 5"):
        detect_environment({**SLURM_RANK3, "SLURM_PROCID": "5"})


def test_master_port_is_deterministic_and_unprivileged():
    ports = {derive_master_port(str(job)) for job in range(2000)}
    assert derive_master_port("12345") == derive_master_port("12345")
    assert min(ports) >= PORT_RANGE[0] >= 1024 and max(ports) < PORT_RANGE[1] <= 32768
    assert len(ports) > 1500  # spread out: neighbouring job ids rarely share a port
