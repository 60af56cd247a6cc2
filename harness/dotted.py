"""Dotted paths into nested mappings ('train.steps', 'env.packages.torch'): one getter, one flattener."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def get(node: Mapping, dotted: str) -> Any:
    """node['a']['b'] for 'a.b' (a KeyError names the missing part)."""
    for part in dotted.split("."):
        node = node[part]
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
