"""Each private API of another library that we use (through its compat module) still is what we expect.

When a new submitit, torch, Hydra or OmegaConf changes one of them, the test of that one fails here,
with its name, rather than a run failing somewhere deep.
"""

import inspect
import sys
from pathlib import Path

import pytest
import submitit
import torch
import torch.distributed.checkpoint as dcp
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf, ValueNode
from submitit.core import job_environment, submission

from cluster import submitit_compat
from cluster.runtime import dcp_compat
from cluster.runtime.checkpoint import SafeReader, read_whole
from hydra_plugins.clusterjobs_launcher import hydra_compat, omegaconf_compat
from tests.helpers import REPO


def parameters(function) -> list[str]:
    return list(inspect.signature(function).parameters)


# submitit ------------------------------------------------------------------------------------------------------


def test_submitit_renders_an_sbatch_script_from_executor_parameters():
    text = submitit_compat.make_sbatch_string(command="python -u -m cluster.slurm.task_runner /f", folder=Path("/f"),
                                              nodes=2, ntasks_per_node=3, time=5, job_name="x")
    assert "#SBATCH --nodes=2" in text and "#SBATCH --ntasks-per-node=3" in text
    assert text.rstrip().endswith("python -u -m cluster.slurm.task_runner /f")


def test_submitit_executor_runs_the_command_we_give_its_tasks(tmp_path):
    executor = submitit_compat.executor_with_command("echo ours", tmp_path)
    assert isinstance(executor, submitit.SlurmExecutor) and executor._submitit_command_str == "echo ours"


def test_submitit_job_runner_and_its_signal_handlers_have_the_shape_we_replace():
    assert parameters(job_environment.JobEnvironment._handle_signals) == ["self", "paths", "submission"]
    assert parameters(submission.process_job) == ["folder"]


def _fails() -> None:
    raise ValueError("the cause, on its last line")


def test_submitit_failure_text_ends_with_the_tasks_own_error(tmp_path):
    executor = submitit.LocalExecutor(folder=tmp_path)
    executor.update_parameters(timeout_min=1)
    job = executor.submit(_fails)
    job.wait()
    text = submitit_compat.failure_text(job.exception())
    assert text.splitlines()[-1] == "ValueError: the cause, on its last line"


# torch.distributed.checkpoint ------------------------------------------------------------------------------


def test_dcp_reads_a_whole_checkpoint_without_a_template_and_its_index_names_only_known_functions(tmp_path):
    state = {"model": {"w": torch.arange(6.0).reshape(2, 3)}, "progress": {"step": 7}}
    dcp.save(state, checkpoint_id=str(tmp_path))
    SafeReader(str(tmp_path)).read_metadata()  # the index names nothing beyond dcp_compat.METADATA_FUNCTIONS
    whole = read_whole(tmp_path)
    assert torch.equal(whole["model"]["w"], state["model"]["w"]) and whole["progress"]["step"] == 7
    assert parameters(dcp_compat._load_state_dict)[:4] == ["state_dict", "storage_reader", "process_group",
                                                           "coordinator_rank"]
    assert "no_dist" in parameters(dcp_compat._load_state_dict)
    assert issubclass(dcp_compat.WholeStateLoadPlanner, dcp.DefaultLoadPlanner)


# Hydra ---------------------------------------------------------------------------------------------------------


def test_hydra_applies_value_overrides_to_a_composed_config():
    config = OmegaConf.create({"optim": {"lr": 0.1, "momentum": 0.9}})
    overrides = OverridesParser.create().parse_overrides(["optim.lr=0.5", "~optim.momentum", "+train.seed=3"])
    hydra_compat.apply_overrides(overrides, config)
    assert OmegaConf.to_container(config) == {"optim": {"lr": 0.5}, "train": {"seed": 3}}
    assert hydra_compat.overrides_dirname(overrides[:1], kv_sep="=", item_sep=",", exclude_keys=[]) == "optim.lr=0.5"


def test_hydra_tells_groups_from_values_and_has_its_basic_sweeper():
    from hydra._internal.config_loader_impl import ConfigLoaderImpl
    from hydra._internal.utils import create_config_search_path
    from hydra.plugins.sweeper import Sweeper

    loader = ConfigLoaderImpl(config_search_path=create_config_search_path(str(REPO / "conf")))
    assert hydra_compat.group_exists(loader, "model") and not hydra_compat.group_exists(loader, "optim.lr")
    assert issubclass(hydra_compat.BasicSweeper, Sweeper)
    assert parameters(hydra_compat.BasicSweeper.validate_batch_is_legal) == ["self", "batch"]


# OmegaConf -----------------------------------------------------------------------------------------------------


def test_omegaconf_shows_plain_value_nodes_and_unresolved_text():
    config = OmegaConf.create({"a": 1, "b": "${a}", "c": "???", "d": {"e": 2}})
    node = omegaconf_compat.value_node(config, "a")
    assert isinstance(node, ValueNode) and node.validate_and_convert(5) == 5
    assert [omegaconf_compat.value_node(config, key) for key in ("b", "c", "d", "zz")] == [None] * 4
    assert omegaconf_compat.raw_text(config, "b") == "${a}"


@pytest.mark.parametrize("module", [submitit_compat, dcp_compat, hydra_compat, omegaconf_compat])
def test_each_compat_module_says_which_library_and_why(module):
    assert module.__doc__ and "private" in module.__doc__ and "test_compat" in module.__doc__
    assert module.__name__ in sys.modules


def test_xdist_schedules_by_the_scope_our_scheduler_gives_every_slurm_test():
    """tests/xdist_scheduling.py relies on xdist asking ``_split_scope`` for each test's unit of work."""
    from xdist.scheduler import LoadScopeScheduling

    from tests.xdist_scheduling import SlurmTestsTogether

    assert "self._split_scope(nodeid)" in inspect.getsource(LoadScopeScheduling.schedule)
    scope = SlurmTestsTogether._split_scope
    ids = ["tests/slurm/test_a.py::test_x", "tests/slurm/test_b.py::test_y[1]", "tests/ranks/test_c.py::test_z",
           "tests/unit/test_d.py::test_w"]
    assert [scope(None, nodeid) for nodeid in ids] == ["tests/slurm/", "tests/slurm/", *ids[2:]]
