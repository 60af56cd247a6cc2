"""The results store: schema validation, atomic writes, loading, resume hashes, grouping, env diffs."""

from __future__ import annotations

import copy
import json
import os
import sys

import pytest


from tests import fixtures_records as fx

from harness.results import store as results  # noqa: E402
from harness.errors import UserError  # noqa: E402


def test_fixture_record_is_valid_and_metric_directions_cover_it():
    record, _ = fx.make_record()
    assert results.validate_record(record) == []
    plain = [k for k in record["metrics"] if not k.endswith("_ci")]
    from harness.results.metric_table import METRIC_DIRECTION

    assert set(plain) <= set(METRIC_DIRECTION)
    assert METRIC_DIRECTION["cer"] == "lower"
    assert METRIC_DIRECTION["field_f1"] == "higher"
    assert METRIC_DIRECTION["train_samples_per_s"] == "higher"
    assert METRIC_DIRECTION["peak_rss_mib"] == "lower"
    assert METRIC_DIRECTION["final_loss"] == "lower"


def test_validate_record_names_missing_keys_and_wrong_version():
    record, _ = fx.make_record()
    del record["spec_hash"], record["env"]
    record["schema_version"] = 99
    problems = results.validate_record(record)
    assert any("schema_version is 99" in p for p in problems)
    assert any("missing keys: spec_hash, env" in p for p in problems)


def test_validate_record_ok_needs_metrics_failed_does_not():
    ok, _ = fx.make_record()
    del ok["metrics"]
    assert any("metrics" in p for p in results.validate_record(ok))
    failed, _ = fx.make_record(status="failed", error="boom")
    assert "metrics" not in failed
    assert results.validate_record(failed) == []


@pytest.mark.parametrize("mutate, expected", [
    (lambda r: r.update(status="exploded"), "status 'exploded'"),
    (lambda r: r["metrics"].update(cer="0.1"), "metrics.cer must be a number"),
    (lambda r: r["metrics"].update(cer_ci=[0.1]), "metrics.cer_ci must be [lo, hi]"),
    (lambda r: r.update(run_id="../escape"), "run_id '../escape'"),
    (lambda r: r.update(cell=[1]), "cell must be an object"),
    (lambda r: r["train"].update(steps=[{"loss": 1.0}]), "train.steps"),
])
def test_validate_record_catches_bad_values(mutate, expected):
    record, _ = fx.make_record()
    mutate(record)
    assert any(expected in p for p in results.validate_record(record))


def test_validate_record_rejects_non_object():
    assert results.validate_record([1, 2]) == ["a record must be a JSON object, got list"]


def test_write_then_load_round_trip(tmp_path):
    record, _ = fx.make_record()
    path = results.write_record(tmp_path, record)
    assert path == tmp_path / "runs" / f"{record['run_id']}.json"
    (loaded,) = results.load_records(tmp_path)
    assert loaded["_source"] == str(path)
    assert {k: v for k, v in loaded.items() if k != "_source"} == json.loads(json.dumps(record))
    # private keys never reach the disk
    results.write_record(tmp_path, loaded)
    assert "_source" not in json.loads(path.read_text())


def test_write_record_refuses_invalid_record(tmp_path):
    record, _ = fx.make_record()
    del record["env"]
    with pytest.raises(ValueError, match="missing keys: env"):
        results.write_record(tmp_path, record)
    assert not (tmp_path / "runs").exists() or not list((tmp_path / "runs").iterdir())


def test_crash_mid_write_keeps_old_record_and_leaves_nothing_partial(tmp_path, monkeypatch):
    old, _ = fx.make_record()
    path = results.write_record(tmp_path, old)
    before = path.read_bytes()
    new = copy.deepcopy(old)
    new["metrics"]["cer"] = 0.999

    def crash_before_the_rename(fd):  # the new record is in the temp file, not yet renamed
        raise OSError("simulated crash: disk full")

    monkeypatch.setattr(results.os, "fsync", crash_before_the_rename)
    with pytest.raises(OSError, match="simulated crash"):
        results.write_record(tmp_path, new)
    monkeypatch.undo()

    assert path.read_bytes() == before  # the old record is intact
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]  # temp file cleaned up
    (loaded,) = results.load_records(tmp_path)
    assert loaded["metrics"]["cer"] == old["metrics"]["cer"]


def test_temp_file_left_by_a_killed_writer_is_never_loaded(tmp_path):
    record, _ = fx.make_record()
    path = results.write_record(tmp_path, record)
    # kill -9 between write and replace leaves the temp file behind, half written
    (path.parent / f".{path.name}.k3j2.tmp").write_text(path.read_text()[:100])
    assert [r["run_id"] for r in results.load_records(tmp_path)] == [record["run_id"]]


def test_a_corrupt_record_in_a_directory_is_skipped_with_a_warning_naming_it(tmp_path, capsys):
    record, _ = fx.make_record()
    results.write_record(tmp_path, record)
    (tmp_path / "runs" / "bad-run.json").write_text('{"schema_version": 1, "run_id": ')
    assert [r["run_id"] for r in results.load_records(tmp_path)] == [record["run_id"]]
    err = capsys.readouterr().err
    assert "warning: skipped a corrupt record" in err and "bad-run.json: malformed JSON" in err
    with pytest.raises(UserError, match=r"bad-run\.json: malformed JSON"):  # named on its own: an error
        results.load_records(tmp_path / "runs" / "bad-run.json")


def test_a_record_of_an_older_schema_is_migrated_on_load(tmp_path, monkeypatch):
    from harness.results import schema

    record, _ = fx.make_record()
    old = {**record, "schema_version": 0, "cell_v0": record["cell"]}
    del old["cell"]
    monkeypatch.setitem(schema.MIGRATIONS, 0, lambda r: {**{k: v for k, v in r.items() if k != "cell_v0"},
                                                         "cell": r["cell_v0"]})
    file = tmp_path / "old.json"
    file.write_text(json.dumps(old))
    (loaded,) = results.load_records(file)
    assert loaded["schema_version"] == schema.SCHEMA_VERSION and loaded["cell"] == record["cell"]


def test_load_records_wrong_version_names_the_file(tmp_path):
    record, _ = fx.make_record()
    record["schema_version"] = 0
    file = tmp_path / "one.json"
    file.write_text(json.dumps(record))
    with pytest.raises(UserError, match=r"one\.json: not a lorabench record: schema_version is 0"):
        results.load_records(file)


def test_load_records_bundle_single_file_and_runs_dir(tmp_path):
    records = [fx.make_record("peft", "aligned", s)[0] for s in (0, 1)]
    bundle = tmp_path / "bundle.json"
    bundle.write_text(json.dumps(results.make_bundle(records, "default", "2026-01-01T00:00:00Z")))
    assert [r["run_id"] for r in results.load_records(bundle)] == sorted(r["run_id"] for r in records)
    for r in records:
        results.write_record(tmp_path / "res", r)
    assert len(results.load_records(tmp_path / "res")) == 2
    assert len(results.load_records(tmp_path / "res" / "runs")) == 2  # the runs/ dir itself
    single = tmp_path / "res" / "runs" / f"{records[0]['run_id']}.json"
    assert results.load_records(single)[0]["run_id"] == records[0]["run_id"]
    # a parity document next to the records is not a record
    (tmp_path / "res" / "runs" / "parity.json").write_text("{}")
    assert len(results.load_records(tmp_path / "res")) == 2


def test_bundle_with_wrong_version_is_an_error_and_a_bad_record_is_skipped(tmp_path):
    record, _ = fx.make_record()
    bundle = tmp_path / "b.json"
    bundle.write_text(json.dumps({"schema_version": 9, "records": [record]}))
    with pytest.raises(UserError, match=r"b\.json: bundle schema_version is 9"):
        results.load_records(bundle)
    good = dict(record)
    del record["cell"]
    bundle.write_text(json.dumps({"schema_version": 1, "records": [record, good]}))
    assert len(results.load_records(bundle)) == 1  # the bad one is skipped, with a warning


def test_load_records_missing_path_and_empty_dir(tmp_path):
    with pytest.raises(UserError, match="no such file or directory"):
        results.load_records(tmp_path / "nope")
    assert results.load_records(tmp_path) == []


def test_make_bundle_strips_step_logs_only():
    record, _ = fx.make_record()
    record["_source"] = "/somewhere"
    bundle = results.make_bundle([record], "default", "2026-01-01T00:00:00Z")
    (kept,) = bundle["records"]
    assert "steps" not in kept["train"] and kept["train"]["train_s"] == record["train"]["train_s"]
    assert kept["metrics"]["final_loss"] == record["metrics"]["final_loss"]
    assert "_source" not in kept and "steps" in record["train"]  # the input is not modified
    assert results.validate_record(kept) == []


def test_finished_hashes_counts_only_ok_runs(tmp_path):
    ok, _ = fx.make_record("peft", "aligned", 0)
    failed, _ = fx.make_record("peft", "aligned", 1, status="failed")
    oom, _ = fx.make_record("swift", "aligned", 0, status="oom")
    for r in (ok, failed, oom):
        results.write_record(tmp_path, r)
    assert results.finished_hashes(tmp_path) == {ok["spec_hash"]}
    assert results.finished_hashes(tmp_path / "not-yet") == set()


def test_group_cells_groups_and_orders():
    records = [fx.make_record(f, a, s)[0] for f in ("swift", "peft") for a in ("native", "aligned")
               for s in (0, 1)]
    groups = results.group_cells(records)
    assert list(groups) == [("peft", "aligned"), ("peft", "native"), ("swift", "aligned"),
                            ("swift", "native")]
    assert [len(g) for g in groups.values()] == [2, 2, 2, 2]
    assert {r["cell"]["seed"] for r in groups[("swift", "native")]} == {0, 1}
    by_fw = results.group_cells(records, by=("framework",))
    assert list(by_fw) == [("peft",), ("swift",)]
    assert results.group_cells(records, by=("lever",)) == {(None,): records}


def test_env_fingerprint_diff():
    a = fx.make_env()
    assert results.env_fingerprint_diff(a, copy.deepcopy(a)) == []
    b = fx.make_env(hostname="elsewhere", git_commit="feedface")  # expected to differ: not reported
    assert results.env_fingerprint_diff(a, b) == []
    c = copy.deepcopy(a)
    c["packages"]["torch"] = "2.15.0"
    c["cpu"] = "Other CPU"
    c["gpu"] = ["NVIDIA H100"]
    c["dataset"]["checksum"] = "ffff"
    assert results.env_fingerprint_diff(a, c) == [
        "cpu: Synthetic CPU @ 2.0GHz != Other CPU",
        "gpu: [] != ['NVIDIA H100']",
        "packages.torch: 2.14.1 != 2.15.0",
        "dataset.checksum: d5e7a1c0 != ffff",
    ]


def test_metric_values_and_ci_half_widths_skip_failed_runs():
    a, _ = fx.make_record("peft", "aligned", 0)
    b, _ = fx.make_record("peft", "aligned", 1, status="failed")
    a["metrics"]["cer"] = 0.25
    a["metrics"]["cer_ci"] = [0.2, 0.3]
    assert results.metric_values([a, b], "cer") == [0.25]
    assert results.ci_half_widths([a, b], "cer") == pytest.approx([0.05])
    assert results.metric_values([a, b], "gpu_max_allocated_mib") == []  # null on CPU
