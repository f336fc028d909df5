"""What a checkpoint must match to be resumed: the settings that change the numbers, flattened to
``group.field`` keys (the keys ``train.allow_changes`` names)."""

import dataclasses
import json
from typing import Any

from jobs.settings import DataSplit, OptimConfig, StrategyConfig, TrainConfig
from jobs.targets import KEY, Target

# Settings that may change between runs of one training: where the data lies and how it is read, how
# gradients are bucketed, and whether activations are kept or computed again. train.steps and the
# log/checkpoint cadence are left out (train longer).
_IGNORED = {"data": {"root", "download"}, "strategy": {"bucket_cap_mb", "fsdp_units", "activation_checkpointing"}}
_ADDED_LATER = ("precision", "grad_clip_norm")  # train.*: count only when set, so older checkpoints still resume


def fingerprint_config(model: Target, data: Target, loss: Target, optim: OptimConfig, strategy: StrategyConfig,
                       train: TrainConfig, split: DataSplit = DataSplit()) -> dict[str, Any]:
    """The settings a checkpoint must match to be resumed, flattened (``optim.lr``: 0.05, ``model._target_``, ...)."""
    groups: dict[str, Any] = {
        **{code.group: {KEY: code.path, **code.kwargs} for code in (model, data, loss)},
        "optim": dataclasses.asdict(optim), "strategy": dataclasses.asdict(strategy)}
    relevant: dict[str, Any] = {
        group: {k: v for k, v in settings.items() if k not in _IGNORED.get(group, ())}
        for group, settings in groups.items()}
    if split.val_fraction:  # the samples held out are not trained on (added later: counted only when set)
        relevant["data"]["val_fraction"] = split.val_fraction
    relevant["train"] = {"global_batch_size": train.global_batch_size, "seed": train.seed}
    defaults = TrainConfig()
    relevant["train"].update({key: getattr(train, key) for key in _ADDED_LATER
                              if getattr(train, key) != getattr(defaults, key)})
    return _flatten(json.loads(json.dumps(relevant)))


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat
