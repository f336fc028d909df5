"""Hydra's multirun through clusterjobs: ``python -m jobs.train -m cluster=slurm optim.lr=1e-3,1e-4``.

Hydra finds launchers only in the ``hydra_plugins`` package; this one composes every member as Hydra's
own launchers do (``load_sweep_config``, ``hydra.sweep.dir``/``hydra.sweep.subdir``) and hands the
configs to ``jobs.sweep``, which checks them all and submits them as job arrays. Unlike Hydra's
submitit launcher it returns once they are submitted (hydra#2479).
"""

import contextlib
import copy
import dataclasses
import functools
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

from hydra._internal.config_loader_impl import ConfigLoaderImpl, get_overrides_dirname
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.config_store import ConfigStore
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from hydra.core.utils import JobReturn, JobStatus
from hydra.errors import HydraException
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict

from cluster.sweep import SweepOptions


@dataclasses.dataclass
class ClusterjobsLauncherConf(SweepOptions):  # the fields and their docs: cluster.sweep.SweepOptions
    _target_: str = "hydra_plugins.clusterjobs_launcher.clusterjobs_launcher.ClusterjobsLauncher"


ConfigStore.instance().store(group="hydra/launcher", name="clusterjobs", node=ClusterjobsLauncherConf,
                             provider="clusterjobs")


class ClusterjobsLauncher(Launcher):
    def __init__(self, **settings: object) -> None:
        self.settings = settings  # checked in launch(), where a bad value gets one line, not a traceback
        self.config: DictConfig | None = None
        self.hydra_context: HydraContext | None = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config, self.hydra_context = config, hydra_context

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        # Late: Hydra imports every plugin at start-up, even for a single run.
        from jobs.sweep import launch_sweep
        from jobs.train import exit_on_user_error

        assert self.config is not None and self.hydra_context is not None
        with exit_on_user_error():
            options = SweepOptions(**self.settings)
            members = self._plan_all(job_overrides, initial_job_idx)
            manifest = launch_sweep(members, Path(str(self.config.hydra.sweep.dir)), options)
            if options.wait:
                from cluster.cli import wait_for_sweep
                sys.exit(wait_for_sweep(Path(manifest.sweep_dir)))
        return [JobReturn(overrides=p.member.overrides, status=JobStatus.COMPLETED, _return_value=p.member.slurm_id,
                          working_dir=p.member.run_dir) for p in members]

    def _plan_all(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> list:
        """Every member's plan, or one ValueError that names every member whose config is refused."""
        from cluster.sweep import Member
        from jobs.config import plan_from_config
        from jobs.sweep import PlannedMember

        assert self.config is not None and self.hydra_context is not None
        composer = MemberComposer(self.config, self.hydra_context)
        members, problems = [], []
        for index, overrides in enumerate(map(list, job_overrides), start=initial_job_idx):
            try:
                with composer.member(index, overrides) as (task, run_dir):
                    plan = plan_from_config(task)
            except (ValueError, HydraException) as error:
                problems.append(f"member {index} ({' '.join(overrides) or 'no overrides'}): {error}")
                continue
            member = Member(index=index, overrides=overrides, run_dir=str(run_dir.resolve()), steps=plan.train.steps)
            members.append(PlannedMember(member=member, plan=plan))
        if problems:
            raise ValueError(f"{len(problems)} of {len(job_overrides)} sweep member(s) are refused, nothing was "
                             "submitted:\n  " + "\n  ".join(problems))
        return members


class MemberComposer:
    """Members' configs, composed once per choice of config groups.

    A whole Hydra composition costs ~0.1 s here, so 1000 members would keep the prompt for minutes.
    Members that pick the same groups (``model=cnn``) differ only in values (``optim.lr=0.1``), which
    are applied to their group's composition the way Hydra applies them after composing: set in place
    and undone after the member (a copy per member cost ~3 ms), or, for additions and deletions
    (``+key=v``, ``~key``), on a copy.
    """

    def __init__(self, config: DictConfig, hydra_context: HydraContext) -> None:
        self.config, self.loader = config, hydra_context.config_loader
        self.parser = OverridesParser.create(config_loader=self.loader)
        self.composed: dict[tuple[str, ...], tuple[DictConfig, DictConfig]] = {}
        self.parsed: dict[str, Override] = {}

    @contextlib.contextmanager
    def member(self, index: int, overrides: list[str]) -> Iterator[tuple[DictConfig, Path]]:
        """The member's task config (no ``hydra`` node; valid inside the block) and its run directory."""
        parsed = [self._parse(line) for line in overrides]
        by_value = [o for o in parsed if not o.is_hydra_override() and not self._is_group(o.key_or_group)]
        hydra, shared = self._composition(tuple(o.input_line for o in parsed if o not in by_value))
        in_place = all(self._is_plain_change(o, shared) for o in by_value)
        task = shared if in_place else copy.deepcopy(shared)
        saved = [(o.key_or_group, OmegaConf.select(shared, o.key_or_group, throw_on_missing=False))
                 for o in by_value] if in_place else []
        try:
            ConfigLoaderImpl._apply_overrides_to_config(by_value, task)
            yield task, self._run_dir(hydra, index, parsed)
        finally:
            for key, value in reversed(saved):
                OmegaConf.update(shared, key, value, merge=False)

    def _composition(self, base: tuple[str, ...]) -> tuple[DictConfig, DictConfig]:
        """(hydra node, task config) of the groups ``base`` picks, composed the first time it is asked for."""
        if base not in self.composed:
            config = self.loader.load_sweep_config(self.config, list(base))
            task = OmegaConf.masked_copy(config, [key for key in config if key != "hydra"])
            OmegaConf.set_struct(task, True)
            self.composed[base] = config.hydra, task
        return self.composed[base]

    def _run_dir(self, hydra: DictConfig, index: int, parsed: list[Override]) -> Path:
        sweep_dir = Path(str(self.config.hydra.sweep.dir))  # one for all members, as in Hydra's own launchers
        if hydra.sweep._get_node("subdir")._value() == DEFAULT_SUBDIR:  # the text, unresolved
            return sweep_dir / str(index)  # resolving it through omegaconf cost ~1 ms per member
        with open_dict(hydra):  # what the sweep dir names may use (hydra.sweep.subdir)
            hydra.job.id = hydra.job.num = index
            hydra.job.override_dirname = get_overrides_dirname(
                overrides=[o for o in parsed if not o.is_hydra_override()],
                kv_sep=hydra.job.config.override_dirname.kv_sep, item_sep=hydra.job.config.override_dirname.item_sep,
                exclude_keys=hydra.job.config.override_dirname.exclude_keys)
        return sweep_dir / str(hydra.sweep.subdir)

    def _parse(self, line: str) -> Override:
        if line not in self.parsed:  # most members share most of their overrides (cluster=slurm)
            self.parsed[line] = self.parser.parse_overrides([line])[0]
        return self.parsed[line]

    @functools.cache
    def _is_group(self, key: str) -> bool:  # a look on disk: once per key
        return self.loader.repository.group_exists(key)  # type: ignore[attr-defined]

    @staticmethod
    def _is_plain_change(override: Override, config: DictConfig) -> bool:
        """``key=value`` replacing a set, plain value (no mapping, list, interpolation or ``???``): undone by
        setting the old value back."""
        if override.is_delete() or override.is_add() or override.is_force_add() or isinstance(
                override.value(), (dict, list)):
            return False
        parent_key, _, leaf = override.key_or_group.rpartition(".")
        parent = OmegaConf.select(config, parent_key) if parent_key else config
        if not isinstance(parent, DictConfig) or leaf not in parent:  # (``in`` is False for ``???``)
            return False
        return not OmegaConf.is_interpolation(parent, leaf) and not isinstance(parent[leaf], (DictConfig, ListConfig))


DEFAULT_SUBDIR = "${hydra.job.num}"  # Hydra's hydra.sweep.subdir


@dataclasses.dataclass
class ClusterjobsSweeperConf:
    _target_: str = "hydra_plugins.clusterjobs_launcher.clusterjobs_launcher.ClusterjobsSweeper"
    max_batch_size: int | None = None  # members handed to the launcher at once (None: all)
    params: dict[str, str] | None = None  # the sweep's parameters, as on the command line


ConfigStore.instance().store(group="hydra/sweeper", name="clusterjobs", node=ClusterjobsSweeperConf,
                             provider="clusterjobs")


class ClusterjobsSweeper(BasicSweeper):
    """Hydra's basic sweeper without its trial composition of every member: the launcher composes each
    member once and names every refused one, so composing them all twice only kept the prompt."""

    def validate_batch_is_legal(self, batch: Sequence[Sequence[str]]) -> None:
        return None
