"""The typed spec keeps the JSON form, hashes and run ids that records and baselines were made with."""

import dataclasses
import json
from pathlib import Path

import pytest

from harness.config.spec import DEFAULTS, make_spec, spec_hash
from harness.config.suite import load_suite
from harness.run_spec import Spec

ROOT = Path(__file__).resolve().parents[2]
BASELINE = ROOT / "results" / "baselines" / "default.json"


def test_the_defaults_are_the_dataclasses_defaults_in_json_form():
    assert Spec().to_dict() == DEFAULTS
    assert Spec.from_dict(DEFAULTS) == Spec()
    assert json.loads(json.dumps(DEFAULTS)) == DEFAULTS  # plain JSON: lists, no tuples


def test_a_spec_is_frozen_and_hashable():
    spec = make_spec({"lora": {"targets": ["q_proj", "v_proj"]}})
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.train.steps = 3  # type: ignore[misc]
    assert spec.lora.targets == ("q_proj", "v_proj") and hash(spec) == hash(make_spec(spec))
    assert spec.to_dict()["lora"]["targets"] == ["q_proj", "v_proj"]


def test_committed_records_keep_their_hash_through_the_typed_spec():
    records = json.loads(BASELINE.read_text())["records"]
    assert records
    for record in records:
        spec = Spec.from_dict(record["spec"])
        assert spec.to_dict() == record["spec"]
        assert spec_hash(spec) == spec_hash(record["spec"]) == record["spec_hash"], record["run_id"]
        assert make_spec(record["spec"]) == spec  # validation changes nothing in a valid spec


def test_the_default_suites_run_ids_are_the_baselines():
    _, cells = load_suite(ROOT / "harness" / "suites" / "default.yaml")
    committed = {r["run_id"] for r in json.loads(BASELINE.read_text())["records"]}
    assert committed <= {c.run_id for c in cells}


def test_an_unknown_key_in_a_json_spec_is_named():
    with pytest.raises(TypeError, match="warmup_ratio"):
        Spec.from_dict({**DEFAULTS, "schedule": {"type": "cosine", "warmup_ratio": 0.1}})
