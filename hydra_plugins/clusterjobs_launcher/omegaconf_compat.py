"""Every use of OmegaConf's private API, in one place (omegaconf 2.3; ``pyproject.toml`` bounds it).
``tests/unit/test_compat.py`` checks each against the installed OmegaConf and fails loudly when a new
version changes one.

The sweep launcher writes a member's plain values into a plain copy of a composition; it must know
which leaves are plain values and how their node would convert a new one, which OmegaConf only
tells through a node's own (private) accessors.
"""

from typing import Any

from omegaconf import DictConfig, OmegaConf, ValueNode


def value_node(parent: DictConfig, key: str) -> ValueNode | None:
    """The node holding a plain value (no mapping, list, interpolation or ``???``) at ``parent[key]``, else None."""
    if key not in parent or OmegaConf.is_interpolation(parent, key):  # ``in`` is False for ``???``
        return None
    node = parent._get_node(key)
    return node if isinstance(node, ValueNode) else None


def raw_text(parent: DictConfig, key: str) -> Any:
    """``parent[key]`` as written, unresolved (``${hydra.job.num}``)."""
    node = parent._get_node(key)
    assert isinstance(node, ValueNode)
    return node._value()
