"""Records of an older schema version load through the migration: a committed version-1 record."""

import json
from pathlib import Path

from harness.results import store
from harness.results.schema import SCHEMA_VERSION, migrate, validate_record

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "record-v1.json"
BASELINE = Path(__file__).resolve().parents[2] / "results" / "baselines" / "default.json"


def test_a_version_1_record_loads_with_its_work_files_relative_to_the_record(tmp_path):
    old = json.loads(GOLDEN.read_text())
    assert old["schema_version"] == 1 and old["train"]["adapter_dir"].startswith("/")
    assert validate_record(old)  # as it is, this lorabench refuses it: the migration is what loads it
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / f"{old['run_id']}.json").write_text(GOLDEN.read_text())
    [record] = store.load_records(tmp_path)
    assert record["schema_version"] == SCHEMA_VERSION
    run_id = old["run_id"]
    assert record["train"]["adapter_dir"] == f"../work/{run_id}/adapter"
    assert record["train"]["framework_args"] == f"../work/{run_id}/training_args.json"
    assert record["train"]["command_line"] == f"../work/{run_id}/reproduce_peft.py"
    # everything else is the record as it was
    assert {k: v for k, v in record.items() if k not in ("train", "schema_version", "_source")} == \
        {k: v for k, v in old.items() if k not in ("train", "schema_version")}


def test_a_path_outside_the_runs_work_directory_is_left_alone():
    old = {**json.loads(GOLDEN.read_text())}
    old["train"] = {**old["train"], "adapter_dir": "/somewhere/else/adapter", "framework_args": None}
    migrated = migrate(old)
    assert migrated["train"]["adapter_dir"] == "/somewhere/else/adapter"
    assert migrated["train"]["framework_args"] is None and not validate_record(migrated)


def test_the_committed_version_1_baseline_still_loads():
    records = store.load_records(BASELINE)
    assert records and all(r["schema_version"] == SCHEMA_VERSION for r in records)
    assert all(r["train"]["adapter_dir"].startswith("../work/") for r in records)
