"""Run specs and suites: YAML in, validated frozen specs out."""
