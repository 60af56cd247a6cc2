"""Framework adapters behind one small interface, loaded lazily by name.

`import adapters` never imports ms-swift, peft or deepspeed: the registry maps a name to
"module:Class" and imports it on first use, so the harness works with only some frameworks
installed, and each worker process imports exactly one framework (ms-swift patches transformers
globally when imported).
"""

from __future__ import annotations

import importlib

from harness.errors import UserError

REGISTRY = {
    "peft": "adapters.peft_adapter:PeftAdapter",
    "swift": "adapters.swift_adapter:SwiftAdapter",
    "llamafactory": "adapters.llamafactory_adapter:LlamaFactoryAdapter",  # in its own environment
    "torch": "adapters.torch_adapter:TorchAdapter",
    "dummy": "adapters.dummy_adapter:DummyAdapter",  # a tiny torch module: tests the harness in seconds
}


def get(name: str):
    """An adapter instance for `name`; an unknown name names the valid ones."""
    if name not in REGISTRY:
        raise UserError(f"unknown framework {name!r} (valid: {', '.join(sorted(REGISTRY))})")
    module, cls = REGISTRY[name].split(":")
    return getattr(importlib.import_module(module), cls)()
