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
