"""Micro-benchmarks (pytest-benchmark) of the hot paths: `make microbench`.

Not part of `make test`'s collection (see pyproject's norecursedirs): each framework's file runs in
its own pytest process, because importing ms-swift patches transformers for the whole process.
Results are saved under .benchmarks/ and compared with pytest-benchmark's own --benchmark-compare.
"""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


@pytest.fixture(scope="session")
def model_dir():
    from harness.run.job import resolve_model_dir

    return resolve_model_dir("tiny")


@pytest.fixture(scope="session")
def rows(tmp_path_factory):
    from harness.data.cards import ensure_built
    from harness.run.job import write_train_file

    data = Path(ensure_built("synthdocs-mini"))
    out = tmp_path_factory.mktemp("mb") / "train.jsonl"
    write_train_file(data / "train.extract.jsonl", out, "extract", 16)
    from adapters.chat_data import read_jsonl

    return read_jsonl(out)
