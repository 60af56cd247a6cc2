"""The embedded tiny model: architecture from a config, the forge that pre-trains it, build and cache."""
