"""Hydra's multirun through clusterjobs: ``python -m jobs.train -m cluster=slurm optim.lr=1e-3,1e-4``.

Hydra finds launchers only in the ``hydra_plugins`` package; this one composes every member as Hydra's
own launchers do (``load_sweep_config``, ``hydra.sweep.dir``/``hydra.sweep.subdir``) and hands the
configs to ``jobs.sweep``, which checks them all and submits them as job arrays. Unlike Hydra's
submitit launcher it returns once they are submitted (hydra#2479).
"""

import copy
import dataclasses
import re
import sys
from collections.abc import Sequence
from collections.abc import Set as AbstractSet
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override, OverrideType, ValueType
from hydra.core.utils import JobReturn, JobStatus
from hydra.errors import HydraException
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

from hydra_plugins.clusterjobs_launcher.hydra_compat import (
    BasicSweeper,
    apply_overrides,
    group_exists,
    overrides_dirname,
)
from hydra_plugins.clusterjobs_launcher.omegaconf_compat import raw_text, value_node
from jobs.settings import SweepSettings


@dataclasses.dataclass
class ClusterjobsLauncherConf(SweepSettings):  # the fields and their docs: jobs.settings.SweepSettings
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
        from jobs.user_errors import exit_on_user_error

        assert self.config is not None and self.hydra_context is not None
        with exit_on_user_error():
            options = SweepSettings(**self.settings)  # type: ignore[arg-type]
            members = self._plan_all(job_overrides, initial_job_idx)
            manifest = launch_sweep(members, Path(str(self.config.hydra.sweep.dir)), options)
            if manifest is None:  # a dry run
                return []
            if options.wait:
                from cluster.sweep.status import follow

                sys.exit(follow(Path(manifest.sweep_dir)))
        return [JobReturn(overrides=p.member.overrides, status=JobStatus.COMPLETED, _return_value=p.member.slurm_id,
                          working_dir=p.member.run_dir) for p in members]

    def _plan_all(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> list:
        """Every member's plan, or one ValueError that names every member whose config is refused."""
        from cluster.sweep.manifest import Member
        from jobs.plan import plan_from_tree
        from jobs.sweep import PlannedMember

        assert self.config is not None and self.hydra_context is not None
        shared = set.intersection(*map(set, job_overrides)) if job_overrides else set()
        composer = MemberComposer(self.config, self.hydra_context, shared=shared)
        members, problems = [], []
        for index, overrides in enumerate(map(list, job_overrides), start=initial_job_idx):
            try:
                tree, run_dir = composer.member(index, overrides)
                plan = plan_from_tree(tree)
            except (ValueError, HydraException, OmegaConfBaseException) as error:
                problems.append(f"member {index} ({' '.join(overrides) or 'no overrides'}): {error}")
                continue
            member = Member(index=index, overrides=overrides, run_dir=str(run_dir.resolve()), steps=plan.train.steps)
            members.append(PlannedMember(member=member, plan=plan, tree=tree))
        if problems:
            raise ValueError(f"{len(problems)} of {len(job_overrides)} sweep member(s) are refused, nothing was "
                             "submitted:\n  " + "\n  ".join(problems))
        return members


class MemberComposer:
    """Members' configs, composed once per choice of config groups.

    A whole Hydra composition costs ~0.1 s here, so 1000 members would keep the prompt for minutes.
    Members that pick the same groups (``model=cnn``) differ only in values (``optim.lr=0.1``). When
    those replace set, untyped values of a composition without interpolations, they are written
    into a plain copy of its container, which is what Hydra's own composition would have given (a
    copy of the DictConfig per member, and its ``to_container``, cost ~2 ms, 2 s for 1000 members);
    anything else (``+key=v``, ``~key``, mappings, interpolations) is applied by Hydra's own code to a
    copy of the composition (~2 ms a member), or, when every member has it (``shared``), composed once with
    the groups (``+cluster.additional.begin=...`` on 10,000 members: 23 s to the prompt, then 2.7 s).
    """

    def __init__(self, config: DictConfig, hydra_context: HydraContext, shared: AbstractSet[str] = frozenset()) -> None:
        self.config, self.loader = config, hydra_context.config_loader
        self.sweep_dir = Path(str(config.hydra.sweep.dir))  # one for all members, as in Hydra's own launchers
        self.parser = OverridesParser.create(config_loader=self.loader)
        self.composed: dict[tuple[str, ...], Composition] = {}
        self.parsed: dict[str, Override] = {}
        self.plain_keys: dict[str, Override] = {}  # key -> the first plain ``key=value`` parsed
        self.groups: dict[str, bool] = {}  # key -> whether it names a config group
        self.shared = shared  # overrides every member has

    def member(self, index: int, overrides: list[str]) -> tuple[dict[str, Any], Path]:
        """The member's task config (no ``hydra`` node) as a plain, resolved container, and its run directory."""
        parsed = [self._parse(line) for line in overrides]
        by_value = [o for o in parsed if not o.is_hydra_override() and not self._is_group(o.key_or_group)
                    and not (str(o.input_line) in self.shared and not _simple_change(o))]
        composition = self._composition(tuple(str(o.input_line) for o in parsed if o not in by_value))
        run_dir = self._run_dir(composition, index, parsed)
        if composition.plain is not None and all(composition.is_plain_change(o) for o in by_value):
            values = {o.key_or_group: composition.converted(o) for o in by_value}
            return _with_values(composition.plain, values), run_dir
        task = copy.deepcopy(composition.task)
        apply_overrides(by_value, task)
        return _plain(OmegaConf.to_container(task, resolve=True, throw_on_missing=True)), run_dir

    def _composition(self, base: tuple[str, ...]) -> "Composition":
        """The composition of the groups ``base`` picks, made the first time it is asked for."""
        if base not in self.composed:
            config = self.loader.load_sweep_config(self.config, list(base))
            task = OmegaConf.masked_copy(config, [str(key) for key in config if key != "hydra"])
            OmegaConf.set_struct(task, True)
            plain = _plain(OmegaConf.to_container(task, resolve=False))
            self.composed[base] = Composition(config.hydra, task, None if _has_interpolation(plain) else plain)
        return self.composed[base]

    def _run_dir(self, composition: "Composition", index: int, parsed: list[Override]) -> Path:
        if composition.default_subdir:
            return self.sweep_dir / str(index)  # resolving it through omegaconf cost ~1 ms per member
        hydra = composition.hydra
        with open_dict(hydra):  # what the sweep dir names may use (hydra.sweep.subdir)
            hydra.job.id = hydra.job.num = index
            hydra.job.override_dirname = overrides_dirname(
                [o for o in parsed if not o.is_hydra_override()],
                kv_sep=hydra.job.config.override_dirname.kv_sep, item_sep=hydra.job.config.override_dirname.item_sep,
                exclude_keys=hydra.job.config.override_dirname.exclude_keys)
        return self.sweep_dir / str(hydra.sweep.subdir)

    def _parse(self, line: str) -> Override:
        if line not in self.parsed:  # most members share most of their overrides (cluster=slurm)
            override = self._number_like_before(line) or self.parser.parse_overrides([line])[0]
            if override.type == OverrideType.CHANGE and override.value_type == ValueType.ELEMENT \
                    and override.package is None and line.startswith(f"{override.key_or_group}="):
                self.plain_keys.setdefault(override.key_or_group, override)
            self.parsed[line] = override
        return self.parsed[line]

    def _number_like_before(self, line: str) -> Override | None:
        """``key=NUMBER`` for a key already seen as a plain ``key=value``: Hydra's parser (~0.5 ms a line; the
        lines of ``train.seed=range(0,1000)`` all differ) is not needed to read a number."""
        match = _KEY_NUMBER.fullmatch(line)
        if match is None or match["key"] not in self.plain_keys:
            return None
        text = match["number"]
        number = int(text) if _INT.fullmatch(text) else float(text)
        return dataclasses.replace(self.plain_keys[match["key"]], _value=number, input_line=line)

    def _is_group(self, key: str) -> bool:
        if key not in self.groups:  # a look on disk: once per key
            self.groups[key] = group_exists(self.loader, key)
        return self.groups[key]


class Composition:
    """One choice of config groups, composed."""

    def __init__(self, hydra: DictConfig, task: DictConfig, plain: dict[str, Any] | None) -> None:
        self.hydra = hydra  # its hydra node (run and sweep directories)
        self.task = task  # everything else, the job's config
        self.plain = plain  # ``task`` as a plain container; None when it holds an interpolation
        self.default_subdir = raw_text(hydra.sweep, "subdir") == DEFAULT_SUBDIR  # the text, unresolved
        self._leaves: dict[str, Any] = {}  # key -> its value node, or None when it holds no plain value

    def is_plain_change(self, override: Override) -> bool:
        """``key=value`` replacing a set, plain value (no mapping, list, interpolation or ``???``) with another
        plain value: what Hydra does to it is to store the value, converted by its node (``converted``)."""
        if not _simple_change(override):
            return False
        key = override.key_or_group
        if key not in self._leaves:  # a look through omegaconf: once per key
            parent_key, _, leaf = key.rpartition(".")
            parent = OmegaConf.select(self.task, parent_key) if parent_key else self.task
            self._leaves[key] = value_node(parent, leaf) if isinstance(parent, DictConfig) else None
        return self._leaves[key] is not None

    def converted(self, override: Override) -> Any:
        """The override's value as its node stores it (``optim.lr=1`` is 1.0 in a float field); a value the
        node's type refuses raises OmegaConf's ValidationError, as a composition would."""
        return self._leaves[override.key_or_group].validate_and_convert(override.value())


def _simple_change(override: Override) -> bool:
    """``key=value`` with a plain value: a candidate for setting by value (``Composition.is_plain_change``)."""
    if override.is_delete() or override.is_add() or override.is_force_add():
        return False
    value = override.value()
    return not (isinstance(value, (dict, list)) or (isinstance(value, str) and "${" in value))


# Numbers as Hydra's grammar reads them (hydra/grammar/OverrideLexer.g4), without its ``_`` separators:
# an int has no leading zero ("007" is a string to Hydra), a float has a point or an exponent.
_INT = re.compile(r"[+-]?(0|[1-9][0-9]*)")
_KEY_NUMBER = re.compile(r"(?P<key>[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*)="
                         r"(?P<number>[+-]?((0|[1-9][0-9]*)|[0-9]*\.[0-9]+([eE][+-]?[0-9]+)?"
                         r"|[0-9]+\.[0-9]*([eE][+-]?[0-9]+)?|[0-9]+[eE][+-]?[0-9]+))")


def _plain(container: Any) -> dict[str, Any]:
    """A config's top level as a plain dict with string keys (its groups)."""
    assert isinstance(container, dict)
    return {str(key): value for key, value in container.items()}


def _has_interpolation(tree: Any) -> bool:
    if isinstance(tree, dict):
        return any(_has_interpolation(value) for value in tree.values())
    if isinstance(tree, list):
        return any(_has_interpolation(value) for value in tree)
    return isinstance(tree, str) and "${" in tree


def _with_values(tree: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
    """``tree`` with each dotted key set to its value; only the mappings on the way are copied."""
    top = dict(tree)
    for key, value in values.items():
        *path, leaf = key.split(".")
        node = top
        for part in path:
            node[part] = node = dict(node[part])
        node[leaf] = value
    return top


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

    def sweep(self, arguments: list[str]) -> Any:
        from cluster.rundir import check_writable
        from cluster.sweep.manifest import MANIFEST
        from jobs.sweep import leave_nothing
        from jobs.user_errors import exit_on_user_error

        assert self.config is not None
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        before = set(sweep_dir.iterdir()) if sweep_dir.is_dir() else None
        with exit_on_user_error():  # one line, where Hydra's own makedirs would raise a traceback
            check_writable(sweep_dir, setting="sweep_dir")
        try:
            return super().sweep(arguments)
        finally:
            # Nothing submitted (a member refused, or a dry run): nothing of this sweep is left either, not
            # Hydra's multirun.yaml nor the run directories the checks made. What was there before stays.
            if not (sweep_dir / MANIFEST).exists():
                leave_nothing(sweep_dir, before)

    def validate_batch_is_legal(self, batch: Sequence[Sequence[str]]) -> None:
        return None
