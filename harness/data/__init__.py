"""Datasets: cards, generated documents, page rendering, and loading samples from JSONL."""
