"""`lorabench regress`, `baseline update` and `history`: verdicts beyond threshold AND noise, exit codes."""

from __future__ import annotations

import copy
import json

import pytest


from tests import fixtures_records as fx

from harness.analysis import regress as regress  # noqa: E402
from harness.cli import main  # noqa: E402
from harness.results.schema import SCHEMA_VERSION  # noqa: E402
from harness.results.store import load_records, write_record  # noqa: E402


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
    """A results dir of the full matrix and its promoted baseline."""
    root = tmp_path_factory.mktemp("regress")
    fx.write_suite(root / "current")
    baseline = root / "baselines" / "default.json"
    assert main(["baseline", "update", "--suite", "default", "--from", str(root / "current"),
                 "--to", str(baseline)]) == 0
    return {"root": root, "current": root / "current", "baseline": baseline,
            "records": load_records(root / "current")}


def _copy_with(records, out_dir, change):
    """Write modified copies of `records` to out_dir/runs; `change(record)` edits one in place."""
    for record in records:
        record = copy.deepcopy({k: v for k, v in record.items() if not k.startswith("_")})
        change(record)
        write_record(out_dir, record)
    return out_dir


def _is(record, framework, alignment):
    return record["cell"]["framework"] == framework and record["cell"]["alignment"] == alignment


def _shift(metric, delta=0.0, factor=1.0, where=("peft", "aligned")):
    def change(record):
        if _is(record, *where) and record["status"] == "ok":
            m = record["metrics"]
            m[metric] = m[metric] * factor + delta
            if f"{metric}_ci" in m:
                m[f"{metric}_ci"] = [v * factor + delta for v in m[f"{metric}_ci"]]
    return change


def _regress_json(capsys, baseline, current, *extra):
    code = main(["regress", "--baseline", str(baseline), "--current", str(current), "--json", *extra])
    captured = capsys.readouterr()
    return code, json.loads(captured.out), captured.err


def _verdicts(result, cell="peft · aligned"):
    return {r["metric"]: r["verdict"] for r in result["rows"] if r["cell_label"] == cell}


def test_baseline_bundle_is_small_and_complete(suite):
    bundle = json.loads(suite["baseline"].read_text())
    assert bundle["schema_version"] == SCHEMA_VERSION and bundle["suite"] == "default"
    assert len(bundle["records"]) == 18
    record = bundle["records"][0]
    assert "steps" not in record["train"]
    assert {"run_id", "spec", "cell", "env", "metrics"} <= set(record)
    assert "final_loss" in record["metrics"]


def test_against_its_own_baseline_exits_0(suite, capsys):
    code, result, err = _regress_json(capsys, suite["baseline"], suite["current"])
    assert code == 0 and result["regressed"] is False
    assert {r["verdict"] for r in result["rows"]} == {"same"}
    assert all(r["ratio"] == pytest.approx(1.0) for r in result["rows"])
    assert err == ""  # same environment: no warning
    rows = {(r["cell_label"], r["metric"]) for r in result["rows"]}
    assert ("torch · native", "field_f1") in rows and ("swift · aligned", "peak_rss_mib") in rows


def test_worse_beyond_noise_exits_1(suite, capsys, tmp_path):
    def change(record):
        _shift("field_f1", delta=-0.2)(record)
        _shift("peak_rss_mib", factor=1.5)(record)
    current = _copy_with(suite["records"], tmp_path, change)
    code, result, _ = _regress_json(capsys, suite["baseline"], current)
    assert code == 1 and result["regressed"] is True
    verdicts = _verdicts(result)
    assert verdicts["field_f1"] == "worse" and verdicts["peak_rss_mib"] == "worse"
    assert verdicts["cer"] == "same"
    assert {r["verdict"] for r in result["rows"] if r["cell_label"] != "peft · aligned"} == {"same"}
    row = next(r for r in result["rows"] if r["cell_label"] == "peft · aligned" and r["metric"] == "peak_rss_mib")
    assert row["ratio"] == pytest.approx(1.5)
    # the plain-text table says it too
    assert main(["regress", "--baseline", str(suite["baseline"]), "--current", str(current)]) == 1
    text = capsys.readouterr().out
    assert "REGRESSED" in text and "WORSE" in text


def test_worse_within_noise_exits_0(suite, capsys, tmp_path):
    # 0.03 is beyond the 0.02 threshold but inside the seed spread / bootstrap interval
    current = _copy_with(suite["records"], tmp_path, _shift("field_f1", delta=-0.03))
    code, result, _ = _regress_json(capsys, suite["baseline"], current)
    row = next(r for r in result["rows"] if r["cell_label"] == "peft · aligned" and r["metric"] == "field_f1")
    assert row["delta"] == pytest.approx(-0.03) and row["noise"] > 0.03 and row["threshold"] == 0.02
    assert row["verdict"] == "same" and code == 0


def test_better_is_not_a_regression(suite, capsys, tmp_path):
    current = _copy_with(suite["records"], tmp_path, _shift("train_samples_per_s", factor=2.0))
    code, result, _ = _regress_json(capsys, suite["baseline"], current)
    assert code == 0 and _verdicts(result)["train_samples_per_s"] == "better"


def test_threshold_override(suite, capsys, tmp_path):
    current = _copy_with(suite["records"], tmp_path, _shift("field_f1", delta=-0.2))
    assert _regress_json(capsys, suite["baseline"], current)[0] == 1
    code, result, _ = _regress_json(capsys, suite["baseline"], current, "--threshold", "field_f1=0.25")
    assert code == 0 and _verdicts(result)["field_f1"] == "same"


def test_missing_cell_failed_seed_and_new_cell(suite, capsys, tmp_path):
    keep = [r for r in suite["records"] if not _is(r, "torch", "native")]

    def fail_seed(record):
        if _is(record, "swift", "aligned") and record["cell"]["seed"] == 1:
            record.update(status="oom", error="CUDA out of memory")
            del record["metrics"]
    current = _copy_with(keep, tmp_path, fail_seed)
    extra, rows = fx.make_record("jax", "aligned", 0)
    fx.write_run(tmp_path, extra, rows)
    code, result, _ = _regress_json(capsys, suite["baseline"], current)
    assert code == 1
    cells = {(r["cell_label"], r["verdict"], r["note"]) for r in result["rows"] if r["metric"] is None}
    assert ("torch · native", "missing", "cell not in the current results") in cells
    assert ("swift · aligned", "missing", "seed 1 was ok in the baseline, now oom") in cells
    assert ("jax · aligned", "new", "cell not in the baseline") in cells


def test_one_seed_the_bootstrap_interval_is_the_noise(tmp_path, capsys):
    base_dir, cur_dir = tmp_path / "base", tmp_path / "cur"
    fx.write_suite(base_dir, frameworks=("peft",), alignments=("aligned",), seeds=(0,))
    (record,) = load_records(base_dir)
    lo, hi = record["metrics"]["field_f1_ci"]
    half = (hi - lo) / 2
    assert 0.02 < half < 0.2  # the test below needs an interval between threshold and the big drop
    for delta, expected_code, verdict in ((-half * 0.9, 0, "same"), (-0.2, 1, "worse")):
        _copy_with([record], cur_dir, _shift("field_f1", delta=delta))
        code, result, _ = _regress_json(capsys, base_dir, cur_dir)
        row = next(r for r in result["rows"] if r["metric"] == "field_f1")
        assert row["noise"] == pytest.approx(half) and row["verdict"] == verdict and code == expected_code


def test_noise_is_twice_the_pooled_std_by_hand():
    def rec(seed, value):
        record, _ = fx.make_record("peft", "aligned", seed)
        record["metrics"] = {"field_f1": value}
        return record
    base = [rec(s, v) for s, v in enumerate((0.70, 0.72, 0.74))]
    cur = [rec(s, v) for s, v in enumerate((0.60, 0.62, 0.64))]
    row = regress.compare_metric("field_f1", base, cur, ("abs", 0.02))
    # both sides have sample std 0.02 -> pooled 0.02 -> noise 0.04; drop 0.10 > 0.04 and > 0.02
    assert row["noise"] == pytest.approx(0.04)
    assert row["delta"] == pytest.approx(-0.10)
    assert row["verdict"] == "worse"
    cur_close = [rec(s, v) for s, v in enumerate((0.665, 0.685, 0.705))]  # -0.035: above 0.02, below 0.04
    assert regress.compare_metric("field_f1", base, cur_close, ("abs", 0.02))["verdict"] == "same"
    # relative threshold: 5 % of the baseline loss
    base_loss = [fx.make_record(seed=0)[0]]
    base_loss[0]["metrics"] = {"final_loss": 1.0}
    cur_loss = copy.deepcopy(base_loss)
    cur_loss[0]["metrics"]["final_loss"] = 1.06
    row = regress.compare_metric("final_loss", base_loss, cur_loss, ("rel", 0.05))
    assert row["threshold"] == pytest.approx(0.05) and row["verdict"] == "worse"


def test_environment_differences_warn_on_stderr(suite, capsys, tmp_path):
    def change(record):
        record["env"]["packages"]["torch"] = "2.15.0"
        record["env"]["cpu"] = "Other CPU"
    current = _copy_with(suite["records"], tmp_path, change)
    code, result, err = _regress_json(capsys, suite["baseline"], current)
    assert code == 0
    lines = err.strip().splitlines()
    assert "lorabench: warning: environment differs (baseline != current): packages.torch: 2.14.1 != 2.15.0" in lines
    assert any("cpu: Synthetic CPU @ 2.0GHz != Other CPU" in line for line in lines)
    assert len(lines) == 2 and len(result["warnings"]) == 2


def test_malformed_baseline_exits_2(suite, capsys, tmp_path):
    bad = tmp_path / "broken.json"
    bad.write_text('{"schema_version": 1, "records": [')
    assert main(["regress", "--baseline", str(bad), "--current", str(suite["current"])]) == 2
    err = capsys.readouterr().err
    assert "broken.json: malformed JSON" in err and "Traceback" not in err


def test_wrong_schema_version_exits_2(suite, capsys, tmp_path):
    bundle = json.loads(suite["baseline"].read_text())
    bundle["schema_version"] = 99  # a release newer than this lorabench
    old = tmp_path / "old.json"
    old.write_text(json.dumps(bundle))
    assert main(["regress", "--baseline", str(old), "--current", str(suite["current"])]) == 2
    assert "old.json: bundle schema_version is 99" in capsys.readouterr().err


def test_no_records_or_bad_threshold_exits_2(suite, capsys, tmp_path):
    assert main(["regress", "--baseline", str(suite["baseline"]), "--current", str(tmp_path)]) == 2
    assert "no run records in the current results" in capsys.readouterr().err
    assert main(["regress", "--baseline", str(suite["baseline"]), "--current", str(suite["current"]),
                 "--threshold", "field_f2=0.1"]) == 2
    assert "unknown metric 'field_f2'" in capsys.readouterr().err
    assert main(["regress", "--baseline", str(suite["baseline"]), "--current", str(suite["current"]),
                 "--threshold", "cer"]) == 2


def test_baseline_update_without_ok_records_exits_2(tmp_path, capsys):
    fx.write_suite(tmp_path / "r", frameworks=("peft",), alignments=("aligned",), seeds=(0,),
                   failed={("peft", "aligned", 0): "boom"})
    assert main(["baseline", "update", "--suite", "default", "--from", str(tmp_path / "r"),
                 "--to", str(tmp_path / "b.json")]) == 2
    assert "no ok records of suite 'default'" in capsys.readouterr().err
    assert not (tmp_path / "b.json").exists()


def test_history_orders_commits_and_plots(tmp_path, capsys):
    for commit, started, f1_hit in (("bbbbbbbbbbbb", "2026-02-01T00:00:00Z", 0.9),
                                    ("aaaaaaaaaaaa", "2026-01-01T00:00:00Z", 0.5)):
        for seed in (0, 1):
            record, rows = fx.make_record("peft", "aligned", seed, env=fx.make_env(git_commit=commit),
                                          started_at=started, field_hit=f1_hit)
            record["run_id"] += commit[:2]
            fx.write_run(tmp_path / commit, record, rows)
    out = tmp_path / "plot.png"
    assert main(["history", str(tmp_path / "bbbbbbbbbbbb"), str(tmp_path / "aaaaaaaaaaaa"),
                 "--metric", "field_f1", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    lines = [ln for ln in text.splitlines() if ln.startswith(("aaaa", "bbbb"))]
    assert [ln[:10] for ln in lines] == ["aaaaaaaaaa", "bbbbbbbbbb"]  # oldest first
    records = load_records(tmp_path / "aaaaaaaaaaaa")
    mean_f1 = sum(r["metrics"]["field_f1"] for r in records) / 2
    assert f"{mean_f1:.4f}" in lines[0]
    assert out.read_bytes()[:4] == b"\x89PNG" and out.with_suffix(".pdf").exists()


def test_metrics_filter_judges_only_the_named_metrics(suite, capsys, tmp_path):
    """Two checkouts on a busy machine: memory the same, time worse; `--metrics` judges memory alone."""
    current = _copy_with(suite["records"], tmp_path, _shift("wall_s", factor=3.0))
    code, _, _ = _regress_json(capsys, suite["baseline"], current)
    assert code == 1
    code, result, _ = _regress_json(capsys, suite["baseline"], current, "--metrics",
                                    "peak_anon_above_baseline_mib,peak_anon_mib")
    assert code == 0
    assert {r["metric"] for r in result["rows"]} <= {"peak_anon_above_baseline_mib", "peak_anon_mib", None}
    assert main(["regress", "--baseline", str(suite["baseline"]), "--current", str(current),
                 "--metrics", "peak_anon_mib,nonsense"]) == 2
    assert "unknown metric 'nonsense'" in capsys.readouterr().err
