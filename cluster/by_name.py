"""A function pickled by its import path, imported where it is called.

Pickling a function object needs its module imported; for the training task that means torch, which
alone takes 2-4 s on a login node. Submitting ``ByName("jobs.task", "run_task")`` instead keeps the
submission free of torch: each task imports it on its node.
"""

import dataclasses
import importlib
from typing import Any


@dataclasses.dataclass(frozen=True)
class ByName:
    module: str  # importable module, e.g. jobs.task
    name: str  # the function's name in it

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return getattr(importlib.import_module(self.module), self.name)(*args, **kwargs)

    def __str__(self) -> str:
        return f"{self.module}.{self.name}"
