"""lorabench harness: the framework-neutral core (config, data, models, runner, metrics, reports)."""

__version__ = "0.1.0"
