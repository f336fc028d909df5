"""``python -m cluster run``'s pieces that need no process: the variables each rank gets, what a silent
command's exit means, and the options made from the resources' fields."""

import signal

import pytest

from cluster.environment import TaskEnvironment
from cluster.requeue import EXIT_REQUEUE
from cluster.script.launch import check_command, default_run_dir, option
from cluster.script.task import exit_cause, torchrun_variables

ENV = TaskEnvironment(started_by="slurm", rank=3, local_rank=1, world_size=4, node_rank=1, num_nodes=2,
                      master_addr="node1", master_port=23456, job_id="77", restart_count=0)


def test_each_rank_gets_torchruns_variables():
    assert torchrun_variables(ENV) == {
        "RANK": "3", "LOCAL_RANK": "1", "WORLD_SIZE": "4", "LOCAL_WORLD_SIZE": "2", "GROUP_RANK": "1",
        "GROUP_WORLD_SIZE": "2", "ROLE_RANK": "3", "ROLE_WORLD_SIZE": "4", "MASTER_ADDR": "node1",
        "MASTER_PORT": "23456"}
    assert "TORCHELASTIC_RUN_ID" not in torchrun_variables(ENV)  # the command must still see Slurm


@pytest.mark.parametrize("code, warning, cause", [
    (0, None, ""),
    (0, "USR2", ""),  # it finished before the warning mattered
    (EXIT_REQUEUE, None, "requested"),
    (EXIT_REQUEUE, "USR2", "preemption"),
    (-signal.SIGUSR2, "USR2", "preemption"),  # died of the warning it did not handle
    (128 + signal.SIGTERM, "USR2", "preemption"),  # a shell's way of saying it
    (-signal.SIGTERM, "USR2", "preemption"),
    (1, None, "failure"),
    (1, "USR2", "failure"),  # a crash is a crash, warning or not
    (-signal.SIGSEGV, None, "failure"),
])
def test_a_silent_commands_exit_says_how_it_ended(code, warning, cause):
    assert exit_cause(code, warning=warning, warning_cause="preemption") == cause


def test_options_are_the_fields_names():
    assert option("tasks_per_node") == "--tasks-per-node" and option("run_dir") == "--run-dir"


def test_the_default_run_directory_is_named_after_the_script():
    assert default_run_dir(["python", "-u", "train.py", "--lr", "1"]).parts[:2] == ("runs", "train")
    assert default_run_dir(["./sim"]).parts[:2] == ("runs", "sim")


def test_a_python_script_that_is_not_there_is_refused(tmp_path):
    from cluster.errors import SettingError

    with pytest.raises(SettingError, match="the script 'nope.py' does not exist"):
        check_command(["python3", "nope.py"])
    check_command(["python3", "-c", "print(1)"])  # not a script path: nothing to check
