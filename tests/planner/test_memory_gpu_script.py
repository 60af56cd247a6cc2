"""`make memory-gpu` on a machine without a GPU: the dry run lists the commands and the cells (bf16 on
CUDA, with ZeRO-2, ZeRO-3 and ZeRO-3 + offload), trains nothing; a real run refuses without CUDA."""

import pytest

from harness import memory_gpu


def test_dry_run_lists_commands_and_cells_without_training(tmp_path, capsys):
    results, out = tmp_path / "results", tmp_path / "out"
    assert memory_gpu.main(["--dry-run", "--results", str(results), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert f"$ lorabench run harness/suites/memory-gpu.yaml --results {results} --dry-run" in text
    assert f"$ lorabench plan --validate {results} > {out / 'plan_validation.txt'}" in text
    assert f"$ lorabench report {results} --out {out}" in text
    cells = [[c.strip() for c in line.split("|")] for line in text.splitlines() if line.startswith("  ")]
    assert len(cells) >= 10 and all(c[2] == "cuda" for c in cells)
    assert {c[3] for c in cells if c[1] != "fp32"} == {"bf16"}
    levers = {tuple(c[1:2] + c[4:]) for c in cells if c[0] == "peft"}
    assert {("zero2", "ZeRO-2", "offload: none"), ("zero3", "ZeRO-3", "offload: none"),
            ("zero3+offload", "ZeRO-3", "offload: optimizer, params")} <= levers
    assert "to run, 0 finished" in text  # lorabench run --dry-run listed the run ids
    assert not results.exists() and not out.exists()  # nothing ran, nothing written


def test_dry_run_with_a_model_sets_it_in_every_cell(tmp_path, capsys):
    model = tmp_path / "qwen2-vl-2b"
    model.mkdir()
    (model / "config.json").write_text("{}")  # the dry run checks that the model exists, and loads nothing
    assert memory_gpu.main(["--dry-run", "--results", str(tmp_path / "r"), "--model", str(model)]) == 0
    assert f"--set model={model}" in capsys.readouterr().out


def test_dry_run_with_a_missing_model_names_it(tmp_path, capsys):
    from harness.cli import main
    from harness.paths import REPO_ROOT

    suite = str(REPO_ROOT / "harness" / "suites" / "memory-gpu.yaml")
    assert main(["run", suite, "--dry-run", "--set", "model=/nonexistent/model"]) == 2
    err = capsys.readouterr().err
    assert "model '/nonexistent/model': not an embedded model" in err and "Traceback" not in err


def test_without_cuda_a_real_run_refuses(tmp_path, capsys):
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("a GPU is here: the refusal is for machines without one")
    assert memory_gpu.main(["--results", str(tmp_path / "r"), "--out", str(tmp_path / "o")]) == 2
    assert "no CUDA device here" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_zero_only_dry_run_lists_the_three_levers_and_the_rows_step(tmp_path, capsys):
    results = tmp_path / "results"
    assert memory_gpu.main(["--dry-run", "--zero-only", "--results", str(results)]) == 0
    text = capsys.readouterr().out
    cells = [[c.strip() for c in line.split("|")] for line in text.splitlines() if line.startswith("  ")]
    assert {c[1] for c in cells} == {"zero2", "zero3", "zero3+offload"} and {c[0] for c in cells} == {"peft", "swift"}
    for lever in ("zero2", "zero3", "zero3+offload"):
        assert f"--results {results} --only lever={lever} --dry-run" in text
    assert "measured rows of zero2, zero3, zero3+offload -> harness/planner/published/lora_memory.yaml" in text
    assert "$ lorabench plan --validate-published" in text
    assert not results.exists()


def _gpu_record(model_dir, run_id: str, lever: str, reserved_mib: float) -> dict:
    """A memory-gpu record as a GPU run writes it (schema version 1, migrated when read)."""
    from harness.config.spec import make_spec

    dist = {"zero2": {"zero_stage": 2}, "zero3": {"zero_stage": 3},
            "zero3+offload": {"zero_stage": 3, "offload_optimizer": True, "offload_params": True}}.get(lever, {})
    spec = make_spec({"device": "cuda", "train": {"batch_size": 4, "precision": "bf16"}, "distributed": dist})
    return {
        "schema_version": 1, "run_id": run_id, "suite": "memory-gpu", "spec_hash": "x" * 64, "spec": spec.to_dict(),
        "cell": {"framework": "peft", "alignment": "aligned", "seed": 0, "lever": lever}, "status": "ok",
        "error": None, "started_at": "2026-01-01T00:00:00+00:00", "finished_at": "2026-01-01T00:01:00+00:00",
        "wall_s": 60.0, "command": "lorabench run", "per_sample_file": None,
        "env": {"model": {"path": str(model_dir), "name": "tiny", "checksum": "c"}, "git_commit": "abc123",
                "git_dirty": False, "gpu": ["NVIDIA H100 80GB HBM3"],
                "packages": {"torch": "2.x", "deepspeed": "0.19.8"}},
        "train": {"steps": [{"step": 1, "loss": 1.0, "samples": 4, "tokens": 1800, "max_seq_len": 520,
                             "image_tokens": 960, "seconds": 1.0}], "warmup_steps_excluded": 0,
                  "setup_s": 1.0, "train_s": 1.0},
        "eval": {"task": "extract", "split": "test", "n": 0, "seconds": 0.0, "predictions_file": None},
        "metrics": {"wall_s": 60.0},
        "memory": {"world_size": 1, "zero_stage": spec.distributed.zero_stage,
                   "offload_optimizer": spec.distributed.offload_optimizer,
                   "offload_params": spec.distributed.offload_params,
                   "baseline_rss_mib": 500.0,
                   "per_rank": [{"rank": 0, "peak_rss_mib": 900.0, "peak_rss_above_baseline_mib": 400.0,
                                 "gpu_max_allocated_mib": reserved_mib - 10, "gpu_max_reserved_mib": reserved_mib}]},
    }


def test_rows_only_appends_measured_rows_in_the_published_format(tmp_path, tiny_model_dir, capsys):
    """Records of the ZeRO levers -> rows of the validation set (a copy here), marked as ours with the
    command and date, estimated by plan --validate-published's code; a re-measurement replaces its row."""
    import json
    import shutil

    from harness.planner import published

    results = tmp_path / "results"
    (results / "runs").mkdir(parents=True)
    for run_id, lever, mib in (("memory-gpu-a", "zero2", 300.0), ("memory-gpu-b", "zero3+offload", 250.0),
                               ("memory-gpu-c", "baseline", 200.0)):
        (results / "runs" / f"{run_id}.json").write_text(json.dumps(_gpu_record(tiny_model_dir, run_id, lever, mib)))
    copy = tmp_path / "lora_memory.yaml"
    shutil.copy(published.DATA, copy)
    before = published.load_rows(copy)

    argv = ["--rows-only", "--results", str(results), "--published", str(copy)]
    assert memory_gpu.main(argv) == 0
    assert f"{copy}: 2 rows added, 0 replaced" in capsys.readouterr().out
    rows = published.load_rows(copy)
    assert rows[:len(before)] == before  # the published rows are untouched
    ours = rows[len(before):]
    assert [r["id"] for r in ours] == ["lorabench-peft-zero2-tiny-qwen2vl-nvidia-h100-80gb-hbm3",
                                       "lorabench-peft-zero3-offload-tiny-qwen2vl-nvidia-h100-80gb-hbm3"]
    row = ours[1]
    assert (row["measured_by"], row["half"], row["kind"], row["figure"], row["unit"]) == \
        ("lorabench", "check", "point", 250.0, "MiB")
    assert row["command"] == "python -m harness.memory_gpu " + " ".join(argv) and len(row["date"]) == 10
    assert row["source"]["commit"] == "abc123" and row["source"]["path"].endswith("runs/memory-gpu-b.json")
    assert row["setup"].items() >= {"zero": 3, "offload_optimizer": True, "offload_params": True, "batch": 4,
                                    "max_length": 520, "image_tokens": 240, "cuda_context_gib": 0.0}.items()
    assert "max_memory_reserved" in row["measures"]

    v = published.validate_published(copy)
    (est,) = [r for r in v.rows if r.id == row["id"]]
    assert est.zero_or_offload and est.figure_gib == 250 / 1024 and est.low_gib == est.high_gib > 0
    assert "measured by lorabench" in published.format_validation(v)

    (results / "runs" / "memory-gpu-b.json").write_text(
        json.dumps(_gpu_record(tiny_model_dir, "memory-gpu-b", "zero3+offload", 260.0)))
    assert memory_gpu.main(argv) == 0
    assert f"{copy}: 0 rows added, 2 replaced" in capsys.readouterr().out
    again = published.load_rows(copy)
    assert len(again) == len(rows) and again[-1]["figure"] == 260.0


def test_rows_only_without_gpu_records_says_so(tmp_path, capsys):
    (tmp_path / "runs").mkdir()
    assert memory_gpu.main(["--rows-only", "--results", str(tmp_path), "--published", str(tmp_path / "x.yaml")]) == 1
    assert "no finished GPU run of zero2, zero3, zero3+offload" in capsys.readouterr().err
