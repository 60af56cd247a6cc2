"""The runner end to end on the real frameworks: records, and failures that do not stop the suite (resume
after kill -9, and a worker that dies with its runner, are tested on the dummy adapter: tests/run/test_runner_fast.py
and tests/run/test_dir_lock.py)."""

from pathlib import Path

import pytest
import yaml

from harness.cli import main
from harness.results.store import load_records, validate_record

pytestmark = pytest.mark.integration

SMALL = {"dataset": "synthdocs-mini", "task": "extract",
         "train": {"steps": 2, "batch_size": 2, "grad_accum": 1, "max_train_samples": 8},
         "eval": {"max_samples": 4, "max_new_tokens": 16, "batch_size": 4}}


def _suite(tmp_path, model_dir, **doc) -> Path:
    defaults = {**SMALL, "model": str(model_dir)}
    body = {"name": "t", "defaults": defaults, **doc}
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump(body))
    return path


def test_suite_runs_records_and_survives_failures(tmp_path, tiny_model_dir, mini_dataset, capsys):
    broken = tmp_path / "broken-model"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    suite = _suite(tmp_path, tiny_model_dir, matrix={"framework": ["peft"]},
                   include=[{"framework": "torch", "model": str(broken)},
                            {"framework": "torch", "timeout_s": 2}])
    results = tmp_path / "results"
    code = main(["run", str(suite), "--results", str(results)])
    assert code == 1  # some runs failed, and said so
    records = {r["cell"].get("model", "tiny") + "/" + r["cell"]["framework"] + str(r["cell"].get("timeout_s", "")): r
               for r in load_records(results)}
    assert len(records) == 3
    for r in records.values():
        assert validate_record({k: v for k, v in r.items() if not k.startswith("_")}) == []
    ok = records["tiny/peft"] if "tiny/peft" in records else next(r for r in records.values() if r["status"] == "ok")
    assert ok["status"] == "ok"
    m = ok["metrics"]
    for key in ("cer", "wer", "field_f1", "cer_ci", "train_samples_per_s", "peak_rss_mib", "final_loss", "wall_s"):
        assert key in m, key
    assert m["peak_rss_mib"] > m["peak_rss_above_baseline_mib"] > 0
    # a runaway sampler, not a speed figure: the share is ~0.015 on an idle machine and grows under load
    assert 0 <= m["meter_overhead_fraction"] < 0.25
    assert ok["env"]["packages"]["transformers"] and ok["env"]["dataset"]["checksum"]
    assert (results / "runs" / ok["eval"]["predictions_file"]).is_file()
    # where the wall time went: every phase measured, none negative, together the wall time
    phases = ok["phases"]
    assert set(phases) == {"start_imports_s", "setup_s", "data_s", "forward_s", "backward_s", "optimizer_s",
                           "save_s", "eval_load_s", "eval_generate_s", "eval_score_s", "roundtrip_s", "other_s"}
    assert all(v >= 0 for v in phases.values())
    for name in ("start_imports_s", "setup_s", "data_s", "forward_s", "backward_s", "optimizer_s",
                 "eval_load_s", "eval_generate_s", "roundtrip_s"):
        assert phases[name] > 0, name
    assert sum(phases.values()) == pytest.approx(ok["wall_s"], rel=0.02)
    step = ok["train"]["steps"][-1]
    assert step["data_s"] + step["forward_s"] + step["backward_s"] + step["optimizer_s"] <= step["seconds"]
    assert ok["load"]["other_cpu_fraction"] is not None and ok["load"]["own_cpu_s"] > 0
    statuses = sorted(r["status"] for r in records.values())
    assert statuses == ["failed", "ok", "timeout"]
    failed = next(r for r in records.values() if r["status"] == "failed")
    assert failed["error"] and "exit status" in failed["error"]
    # a re-run skips what finished ok and retries the rest
    capsys.readouterr()
    main(["run", str(suite), "--results", str(results), "--dry-run"])
    out = capsys.readouterr().out
    assert "1 to run" not in out and "2 to run, 1 finished" in out


