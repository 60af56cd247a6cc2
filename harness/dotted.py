"""Dotted paths into nested mappings or typed specs ('train.steps', 'env.packages.torch'): one getter, one flattener."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def get(node: Any, dotted: str) -> Any:
    """node['a']['b'] for 'a.b', or node.a.b on a typed spec (a KeyError names the missing part)."""
    for part in dotted.split("."):
        if isinstance(node, Mapping):
            node = node[part]
        elif part.isidentifier() and hasattr(node, part) and not callable(getattr(node, part)):
            node = getattr(node, part)
        else:
            raise KeyError(part)
    return node


def flatten(mapping: Mapping, prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} -> {'a.b': 1}; lists and empty mappings are values, not levels."""
    flat: dict[str, Any] = {}
    for key, value in mapping.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = value
    return flat
