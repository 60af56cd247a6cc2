"""The record's typed parts name every key the adapter round trip writes (harness.results.schema)."""

import inspect
import json
import re

import torch

from harness.results.schema import LoaderCheck, LoaderKeys, LoaderReleases, RoundtripPart
from harness.run import roundtrip


def test_a_loader_block_and_the_summary_hold_only_typed_keys(tmp_path):
    (tmp_path / "adapter_config.json").write_text(json.dumps({"peft_version": "0.18.1"}))
    tensors = {"a": torch.ones(2, 2)}
    keys = roundtrip.loader_key_check(tensors, tensors)
    block = roundtrip.loader_block(0.0, "float32", {"trainable": {"a": [2, 2]}}, {"a": [2, 2]}, keys)
    block["releases"] = roundtrip.releases(tmp_path)
    summary, cause = roundtrip.summarise({"peft": block, "swift": {"error": "ImportError: no swift"}})
    assert set(keys) == set(LoaderKeys.__annotations__)
    assert set(block["releases"]) == set(LoaderReleases.__annotations__)
    assert set(block) <= set(LoaderCheck.__annotations__)
    assert set(summary) <= set(RoundtripPart.__annotations__)
    assert summary["saved_by_peft"] == "0.18.1" and cause == "swift loader: ImportError: no swift"


def test_every_key_the_round_trip_code_reads_or_writes_is_typed():
    source = inspect.getsource(roundtrip)
    used = {name: set(re.findall(name + r"""\[["'](\w+)["']\]""", source)) for name in ("block", "keys", "summary")}
    assert used["block"] and used["block"] <= set(LoaderCheck.__annotations__)
    assert used["keys"] <= set(LoaderKeys.__annotations__)
    assert used["summary"] <= set(RoundtripPart.__annotations__)
