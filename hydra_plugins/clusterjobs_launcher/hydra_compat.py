"""Every use of Hydra's private API (``hydra._internal``), in one place (hydra-core 1.3; ``pyproject.toml``
bounds it). ``tests/unit/test_compat.py`` checks each against the installed Hydra and fails loudly when a
new version changes one.

The launcher composes each member of a sweep itself, as Hydra's own launchers do, but reuses one
composition for all members that pick the same config groups; Hydra exposes no public API for that.
"""

from typing import Any

from hydra._internal.config_loader_impl import ConfigLoaderImpl, get_overrides_dirname
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.types import Override
from omegaconf import DictConfig

__all__ = ["BasicSweeper", "apply_overrides", "group_exists", "overrides_dirname"]


def apply_overrides(overrides: list[Override], config: DictConfig) -> None:
    """Apply value overrides (``key=v``, ``+key=v``, ``~key``) to a composed config, as Hydra's loader does."""
    ConfigLoaderImpl._apply_overrides_to_config(overrides, config)


def overrides_dirname(overrides: list[Override], *, kv_sep: str, item_sep: str, exclude_keys: list[str]) -> str:
    """Hydra's ``hydra.job.override_dirname`` of a member."""
    return get_overrides_dirname(overrides=overrides, kv_sep=kv_sep, item_sep=item_sep, exclude_keys=exclude_keys)


def group_exists(config_loader: Any, key: str) -> bool:
    """Whether ``key`` names a config group (``model``) rather than a value (``optim.lr``)."""
    return bool(config_loader.repository.group_exists(key))
