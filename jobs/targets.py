"""Code a config names: ``_target_`` (a dotted path to a callable) and its keyword arguments, Hydra's convention.

``model``, ``data`` and ``loss`` are such configs, the built-in ones too (``conf/model/mlp.yaml`` names
``jobs.models.mlp``). A target is checked on the login node by importing it and binding its keyword arguments
to its signature, without calling it; a built-in one (which has a ``settings`` dataclass) has its values checked
too. Rules, for every target: the model's returns a ``torch.nn.Module`` and gets ``sample_shape`` (C, H, W of one
input) and ``num_classes`` from the dataset when it takes parameters of those names and the config does not set
them; the data's returns a map-style dataset of ``(input, target)`` pairs; the loss's is a function
``(output, target) -> scalar`` (called with its keyword arguments) or a class whose instance is one.
"""

import ast
import dataclasses
import functools
import importlib
import inspect
import sys
import textwrap
import typing
from collections.abc import Callable, Mapping
from typing import Any

KEY = "_target_"
# Filled in from the dataset for a model target that takes them (and is not given them by the config).
FROM_THE_DATA = ("sample_shape", "num_classes")


@dataclasses.dataclass(frozen=True)
class Target:
    """One group's target and keyword arguments, as the config gave them."""

    group: str  # model, data or loss
    path: str  # the dotted path: mylab.nets.UNet
    kwargs: Mapping[str, Any]

    @classmethod
    def from_config(cls, group: str, values: Any) -> "Target":
        if not isinstance(values, Mapping) or not values.get(KEY):
            raise ValueError(f"{group}.{KEY} is not set; name your code ({group}._target_=mypackage.module.Name) "
                             f"or choose a built-in one ({group}=NAME)")
        path = values[KEY]
        if not isinstance(path, str) or "." not in path:
            raise ValueError(f"{group}.{KEY}={path!r} is not a dotted path to a callable (mypackage.module.Name)")
        return cls(group, path, {str(k): v for k, v in values.items() if k != KEY})

    @property
    def name(self) -> str:
        """The last part of the path (``mlp`` for ``jobs.models.mlp``)."""
        return self.path.rpartition(".")[2]

    def load(self) -> Callable[..., Any]:
        """Import the target; a missing module or name is told as the config key to fix."""
        module_path, _, name = self.path.rpartition(".")
        try:
            module = importlib.import_module(module_path)
        except ModuleNotFoundError as error:
            raise ValueError(f"{self.group}.{KEY}={self.path}: no module named {error.name!r}; install your package "
                             "(pip install -e .), put its folder on PYTHONPATH, or start from the folder that holds "
                             "it") from None
        except Exception as error:  # the user's module failed while importing: its own error, in one line
            raise ValueError(f"{self.group}.{KEY}={self.path}: importing {module_path} failed: "
                             f"{type(error).__name__}: {error}") from None
        target = getattr(module, name, None)
        if target is None or not callable(target):
            known = ", ".join(n for n in dir(module) if not n.startswith("_") and callable(getattr(module, n)))[:300]
            raise ValueError(f"{self.group}.{KEY}={self.path}: {module_path} has no callable {name!r}"
                             + (f" (it has: {known})" if known else ""))
        return target

    def check(self, *, supplied: tuple[str, ...] = (), called_with: int = 0) -> None:
        """Import the target and check its keyword arguments (and a built-in's values) without calling it;
        ``supplied``: names the caller passes itself when the target takes them; ``called_with``: how many
        leading positional arguments a function target gets when it is used (a loss: output and target)."""
        if self.path.startswith("torch.") and "torch" not in sys.modules:
            return  # torch's own (the default loss): checked where it runs, as importing torch here takes 2-4 s
        target = self.load()
        settings = getattr(target, "settings", None)
        if dataclasses.is_dataclass(settings):
            settings_of(self, settings)
            return
        try:
            signature = inspect.signature(target)
        except (TypeError, ValueError):  # a builtin without a signature: nothing to check here
            return
        takes = signature.parameters
        if called_with and not inspect.isclass(target):
            positional = [n for n, p in takes.items() if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
            takes = {n: p for n, p in takes.items() if n not in positional[:called_with]}  # type: ignore[assignment]
            signature = signature.replace(parameters=list(takes.values()))
        given = dict(self.kwargs)
        given.update({name: None for name in supplied if name in takes and name not in given})
        try:
            signature.bind_partial(**given)
        except TypeError as error:
            known = ", ".join(n for n, p in takes.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY))
            unknown = [key for key in self.kwargs if key not in takes]
            keys = ", ".join(f"{self.group}.{key}" for key in unknown) or ", ".join(
                f"{self.group}.{key}" for key in self.kwargs)
            raise ValueError(f"{keys}: {self.path} does not take {'it' if len(unknown) == 1 else 'them'} ({error}); "
                             f"it takes: {known or 'no keyword arguments'}") from None
        missing = [n for n, p in takes.items() if p.default is p.empty and n not in given
                   and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
        if missing:
            raise ValueError(f"{self.path} needs {', '.join(missing)}: set "
                             + ", ".join(f"{self.group}.{n}=VALUE" for n in missing))

    def check_returns(self, kind: type, what: str) -> None:
        """Refuse a target that says it makes something else than ``kind``: a class that is no subclass of it, or
        a function annotated to return another class (unannotated ones are checked when called)."""
        target = self.load()
        made = target if inspect.isclass(target) else inspect.signature(target).return_annotation
        if isinstance(made, str):  # a postponed annotation: resolved in the target's module
            made = getattr(sys.modules.get(target.__module__), made, made)
        unsaid = (inspect.Signature.empty, typing.Any, object)  # annotations that say nothing of the result
        if inspect.isclass(made) and made not in unsaid and not issubclass(made, kind):
            raise ValueError(f"{self.group}._target_={self.path} makes a {made.__name__}, not {what}; name the "
                             f"callable that returns {what}")

    def attributes(self) -> list[str] | None:
        """The names a class target's ``__init__`` assigns (``self.NAME = ...``), in order: its modules' first
        path segments, known without building it; None for a function, or source that cannot be read."""
        target = self.load()
        if not inspect.isclass(target) or "__init__" not in vars(target):
            return None
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(vars(target)["__init__"])))
        except (OSError, TypeError, SyntaxError):
            return None
        return list(dict.fromkeys(
            node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store)
            and isinstance(node.value, ast.Name) and node.value.id == "self"))

    def call(self, **supplied: Any) -> Any:
        """Call the target with the config's keyword arguments, and those of ``supplied`` it takes that the
        config does not set."""
        target = self.load()
        try:
            takes = inspect.signature(target).parameters
        except (TypeError, ValueError):
            takes = {}  # type: ignore[assignment]
        extra = {name: value for name, value in supplied.items() if name in takes and name not in self.kwargs}
        try:
            return target(**self.kwargs, **extra)
        except TypeError as error:
            raise ValueError(f"{self.group}.{KEY}={self.path} refused its arguments "
                             f"({', '.join(self.kwargs) or 'none'}): {error}") from None

    def as_loss(self) -> Callable[..., Any]:
        """The loss function: a class's instance, or the function with its keyword arguments bound."""
        target = self.load()
        if inspect.isclass(target):
            return self.call()
        return functools.partial(target, **self.kwargs) if self.kwargs else target


def settings_of(target: Target, cls: Any) -> Any:
    """A built-in target's settings (its ``settings`` dataclass), their types and values checked, as config keys."""
    fields = {field.name: field for field in dataclasses.fields(cls)}
    unknown = [key for key in target.kwargs if key not in fields and key not in FROM_THE_DATA]
    if unknown:
        raise ValueError(f"unknown setting {', '.join(f'{target.group}.{key}' for key in unknown)}; "
                         f"{target.group}={target.name} takes: {', '.join(fields)}")
    values = {}
    for key, value in target.kwargs.items():
        if key in FROM_THE_DATA:
            continue
        kind = type(fields[key].default)
        if kind is tuple and isinstance(value, (list, tuple)):
            value = tuple(value)
        elif kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or isinstance(value, bool) != (kind is bool):
            raise ValueError(f"{target.group}.{key}={value!r} is not a {kind.__name__}; "
                             f"set {target.group}.{key}=<a {kind.__name__}>")
        values[key] = value
    return cls(**values)
