"""`lorabench export` and `to_dataframe`: runs and steps tables (CSV, Parquet) and TensorBoard runs."""

from __future__ import annotations

import csv
import json

import pytest

from tests import fixtures_records as fx
from harness.analysis.export import STEP_COLUMNS, to_dataframe  # noqa: E402
from harness.cli import main  # noqa: E402
from harness.results.store import make_bundle, write_json_atomic  # noqa: E402

FAILED = {("swift", "native", 1): "Traceback (most recent call last):\n  ...\nRuntimeError: CUDA out of memory"}


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    path = tmp_path_factory.mktemp("results")
    records = fx.write_suite(path, frameworks=("peft", "swift"), seeds=(0, 1), failed=FAILED)
    return path, records


def test_runs_table_has_identity_cell_spec_metrics_and_env_columns(results):
    path, records = results
    runs = to_dataframe(path)
    assert len(runs) == len(records) == 8
    columns = list(runs.columns)
    assert columns[:5] == ["run_id", "label", "suite", "status", "error"]
    assert columns[columns.index("cell.framework"):columns.index("cell.framework") + 3] == \
        ["cell.framework", "cell.alignment", "cell.seed"]
    for column in ("spec.lora.r", "spec.lora.targets", "spec.train.lr", "spec.world_size",
                   "metrics.cer", "metrics.cer_ci_lo", "metrics.cer_ci_hi", "metrics.field_f1",
                   "metrics.peak_rss_mib", "env.git_commit", "env.git_dirty", "env.packages.torch",
                   "env.packages.ms-swift"):
        assert column in columns, column
    # groups in order: cell, spec, metrics, env
    first = {prefix: min(i for i, c in enumerate(columns) if c.startswith(prefix))
             for prefix in ("cell.", "spec.", "metrics.", "env.")}
    assert first["cell."] < first["spec."] < first["metrics."] < first["env."]
    by_id = runs.set_index("run_id")
    for record in records:
        row = by_id.loc[record["run_id"]]
        assert row["status"] == record["status"] and row["cell.framework"] == record["cell"]["framework"]
        assert row["env.packages.torch"] == "2.14.1" and not row["env.git_dirty"]
        if record["status"] == "ok":
            assert row["metrics.cer"] == pytest.approx(record["metrics"]["cer"])
            assert row["metrics.cer_ci_lo"] == pytest.approx(record["metrics"]["cer_ci"][0])
        else:
            assert row["error"] == "RuntimeError: CUDA out of memory"  # the last line of the error


def test_steps_table_is_long(results):
    path, records = results
    steps = to_dataframe(path, table="steps")
    assert list(steps.columns) == list(STEP_COLUMNS)
    ok = [r for r in records if r["status"] == "ok"]
    assert len(steps) == sum(len(r["train"]["steps"]) for r in ok)
    one = steps[steps.run_id == ok[0]["run_id"]]
    assert list(one.step) == [s["step"] for s in ok[0]["train"]["steps"]]
    assert list(one.loss) == pytest.approx([s["loss"] for s in ok[0]["train"]["steps"]])


def test_parquet_export_reads_back_with_pandas(results, tmp_path, capsys):
    import pandas

    path, records = results
    out = tmp_path / "out"
    assert main(["export", str(path), "--format", "parquet", "--out", str(out)]) == 0
    printed = capsys.readouterr().out.split()
    assert printed == [str(out / "runs.parquet"), str(out / "steps.parquet")]
    runs = pandas.read_parquet(out / "runs.parquet")
    steps = pandas.read_parquet(out / "steps.parquet")
    assert sorted(runs.run_id) == sorted(r["run_id"] for r in records)
    assert list(runs.columns) == list(to_dataframe(path).columns)
    assert runs["metrics.cer"].notna().sum() == 7 and runs.status.tolist().count("failed") == 1
    assert list(steps.columns) == list(STEP_COLUMNS) and len(steps) == 7 * 20


def test_csv_columns(results, tmp_path, capsys):
    path, records = results
    assert main(["export", str(path), "--out", str(tmp_path)]) == 0  # csv is the default
    with open(tmp_path / "runs.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == list(to_dataframe(path).columns)
    assert len(rows) == 8 and {r["cell.framework"] for r in rows} == {"peft", "swift"}
    failed = next(r for r in rows if r["status"] == "failed")
    assert failed["metrics.cer"] == "" and failed["error"] == "RuntimeError: CUDA out of memory"
    assert rows[0]["spec.lora.targets"] == "all-linear" and rows[0]["env.git_dirty"] == "False"
    with open(tmp_path / "steps.csv", newline="") as fh:
        header = next(csv.reader(fh))
    assert header == list(STEP_COLUMNS)


def test_a_list_value_is_one_json_text_column(tmp_path):
    record, rows = fx.make_record(extra_cell={"targets": ["q_proj", "v_proj"]})
    fx.write_run(tmp_path, record, rows)
    runs = to_dataframe(tmp_path)
    assert json.loads(runs.loc[0, "cell.targets"]) == ["q_proj", "v_proj"]
    assert json.loads(runs.loc[0, "spec.targets"]) == ["q_proj", "v_proj"]


def test_tensorboard_export_reads_back_with_the_event_accumulator(results, tmp_path, capsys):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    path, records = results
    out = tmp_path / "out"
    assert main(["export", str(path), "--format", "tensorboard", "--out", str(out)]) == 0
    assert f"tensorboard --logdir {out / 'tensorboard'}" in capsys.readouterr().out
    ok = next(r for r in records if r["status"] == "ok" and r["cell"]["framework"] == "swift")
    events = EventAccumulator(str(out / "tensorboard" / ok["run_id"]))
    events.Reload()
    scalars = events.Tags()["scalars"]
    assert {"train/loss", "train/lr", "train/grad_norm", "final/cer", "final/field_f1"} <= set(scalars)
    loss = events.Scalars("train/loss")
    assert [e.step for e in loss] == [s["step"] for s in ok["train"]["steps"]]
    assert [e.value for e in loss] == pytest.approx([s["loss"] for s in ok["train"]["steps"]], rel=1e-6)
    (final_cer,) = events.Scalars("final/cer")
    assert final_cer.value == pytest.approx(ok["metrics"]["cer"], rel=1e-6)
    # the HParams plugin's session for this run: cell keys and the spec keys that differ, against the metrics
    content = events.PluginTagToContent("hparams")
    session = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
    hparams = session.session_start_info.hparams
    assert hparams["cell.framework"].string_value == "swift"
    assert hparams["cell.seed"].number_value == ok["cell"]["seed"]
    assert hparams["spec.lora.alpha"].number_value == ok["spec"]["lora"]["alpha"]  # differs between runs
    assert "spec.lora.r" not in hparams  # the same everywhere: no comparison to make
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"])
    assert "final/cer" in {m.name.tag for m in experiment.experiment.metric_infos}


def test_tensorboard_re_export_replaces_the_events(results, tmp_path):
    path, records = results
    for _ in range(2):
        assert main(["export", str(path), "--format", "tensorboard", "--out", str(tmp_path)]) == 0
    run_dir = tmp_path / "tensorboard" / records[0]["run_id"]
    assert len(list(run_dir.glob("events.out.tfevents.*"))) == 1


def test_a_bundle_exports_without_steps_next_to_itself(results, tmp_path, capsys):
    path, records = results
    bundle = write_json_atomic(tmp_path / "default.json",
                               make_bundle([r for r in records if r["status"] == "ok"], "default", "2026-01-05"))
    assert main(["export", str(bundle), "--format", "csv,parquet"]) == 0
    out = tmp_path / "default-export"
    assert {p.name for p in out.iterdir()} == {"runs.csv", "steps.csv", "runs.parquet", "steps.parquet"}
    with open(out / "steps.csv", newline="") as fh:
        assert len(list(csv.reader(fh))) == 1  # baselines keep no step logs: the header only


def test_unknown_format_exits_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["export", str(tmp_path), "--format", "excel"])
    assert exit_.value.code == 2
    assert "'excel': choose from csv, parquet, tensorboard" in capsys.readouterr().err


def test_no_records_is_one_line_exit_2(tmp_path, capsys):
    assert main(["export", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("lorabench: error: ") and err.count("\n") == 1 and "no run records" in err


def test_missing_results_is_one_line_exit_2(tmp_path, capsys):
    assert main(["export", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("lorabench: error: ") and err.count("\n") == 1 and "no such file" in err


def test_a_column_mixing_numbers_and_names_is_stored_as_text_in_parquet(tmp_path):
    import pandas

    for framework, batch in (("peft", 4), ("swift", "auto")):
        record, rows = fx.make_record(framework, extra_cell={"batch": batch})
        fx.write_run(tmp_path, record, rows)
    assert main(["export", str(tmp_path), "--format", "parquet", "--out", str(tmp_path / "out")]) == 0
    runs = pandas.read_parquet(tmp_path / "out" / "runs.parquet")
    assert sorted(runs["cell.batch"]) == ["4", "auto"]
