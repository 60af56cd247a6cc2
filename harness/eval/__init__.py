"""The one framework-neutral evaluation: greedy generation on the base model + saved adapter, and metrics."""
