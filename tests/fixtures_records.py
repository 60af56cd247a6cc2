"""Synthetic but schema-valid run records for the results / report / regress tests.

Nothing here trains anything: each record is built from a deterministic RNG seeded by its cell, with
per-sample rows in harness.eval.metrics' format (so the record's `metrics` and `_ci` are exactly what
`harness.eval.metrics.summarize` computes from its per-sample file), a step log, an environment and a
memory section. `write_suite` lays out a results directory as the runner does.
"""

from __future__ import annotations

import copy
import json
import zlib
from pathlib import Path

import numpy as np

from harness.eval import metrics as quality
from harness.config.spec import spec_hash
from harness.results.schema import SCHEMA_VERSION, RunRecord
from harness.results.store import write_record

FRAMEWORKS = ("peft", "swift", "torch")
ALIGNMENTS = ("aligned", "native")
SEEDS = (0, 1, 2)

# Per-(framework, alignment) truth the generator draws around: per-char error rate, field hit rate,
# samples/s, peak RSS MiB. Aligned frameworks agree; native ones differ, as in the design notes.
PROFILES = {
    ("peft", "aligned"): dict(char_err=0.05, field_hit=0.80, samples_per_s=4.0, rss_mib=1500.0),
    ("swift", "aligned"): dict(char_err=0.05, field_hit=0.80, samples_per_s=3.6, rss_mib=1700.0),
    ("torch", "aligned"): dict(char_err=0.05, field_hit=0.80, samples_per_s=4.4, rss_mib=1400.0),
    ("peft", "native"): dict(char_err=0.09, field_hit=0.65, samples_per_s=4.2, rss_mib=1600.0),
    ("swift", "native"): dict(char_err=0.03, field_hit=0.90, samples_per_s=3.0, rss_mib=1300.0),
    ("torch", "native"): dict(char_err=0.07, field_hit=0.70, samples_per_s=4.5, rss_mib=1450.0),
}
DEFAULT_PROFILE = dict(char_err=0.06, field_hit=0.75, samples_per_s=4.0, rss_mib=1500.0)
N_FIELDS = 5
# With detail=True (the keys the runner writes since per-field / per-kind scoring): field names,
# document kinds, references, predictions and test images.
FIELD_NAMES = ("vendor", "date", "total", "number", "address")
KINDS = ("invoice", "receipt", "form")


def _rng(*parts) -> np.random.Generator:
    return np.random.default_rng(zlib.crc32(json.dumps(parts).encode()))


def make_env(**overrides) -> dict:
    env = {
        "git_commit": "0123456789abcdef0123456789abcdef01234567", "git_dirty": False,
        "python": "3.11.7",
        "packages": {"torch": "2.14.1", "transformers": "5.19.0", "peft": "0.20.0",
                     "ms-swift": "4.6.0", "deepspeed": "0.19.8", "jiwer": "4.0.0"},
        "torch_threads": 2, "cpu": "Synthetic CPU @ 2.0GHz", "cores": 2, "gpu": [],
        "hostname": "testhost", "platform": "Linux-6.1-x86_64",
        "dataset": {"name": "synthdocs", "checksum": "d5e7a1c0"},
        "model": {"name": "lorabench-tiny-qwen2vl", "checksum": "9f00ba11"},
        "matmul_peak_gflops": 50.0,
    }
    env.update(copy.deepcopy(overrides))
    return env


def make_per_sample(framework: str, alignment: str, seed: int, n_samples: int = 40,
                    char_err: float | None = None, field_hit: float | None = None,
                    detail: bool = False) -> list[dict]:
    """Per-sample rows (harness.eval.metrics.per_sample format) for one run; same ids in every run.

    detail: rows also carry `kind`, `field_scores` and `field_anls_sum` (drawn from their own RNG,
    so the other columns are the same with and without)."""
    profile = PROFILES.get((framework, alignment), DEFAULT_PROFILE)
    char_err = profile["char_err"] if char_err is None else char_err
    field_hit = profile["field_hit"] if field_hit is None else field_hit
    ids_rng = _rng("lengths")  # the test set is the same for every run: same lengths per id
    ref_chars = ids_rng.integers(60, 140, size=n_samples)
    ref_words = np.maximum(1, ref_chars // 6)
    rng = _rng(framework, alignment, seed, "samples")
    rows = []
    for i in range(n_samples):
        # half the pages are read perfectly, the rest carry twice the error rate: same mean CER,
        # and exact match is not always 0
        perfect = rng.random() < 0.5
        char_edits = 0 if perfect else int(rng.binomial(ref_chars[i], min(1.0, 2 * char_err)))
        word_edits = 0 if perfect else int(rng.binomial(ref_words[i], min(1.0, char_err * 8)))
        json_valid = bool(rng.random() > char_err)
        tp = int(rng.binomial(N_FIELDS, field_hit)) if json_valid else 0
        pred = N_FIELDS if json_valid else 0
        rows.append({
            "id": f"doc-{i:04d}",
            "cer": char_edits / int(ref_chars[i]), "wer": word_edits / int(ref_words[i]),
            "exact_match": char_edits == 0,
            "char_edits": char_edits, "ref_chars": int(ref_chars[i]),
            "word_edits": word_edits, "ref_words": int(ref_words[i]),
            "field_tp": tp, "field_pred": pred, "field_ref": N_FIELDS, "json_valid": json_valid,
        })
    if detail:
        _add_field_detail(rows, _rng(framework, alignment, seed, "fields"))
    return rows


def sample_kind(index: int) -> str:
    return KINDS[index % len(KINDS)]


def reference_fields(index: int) -> dict:
    return {"vendor": f"Vendor {index:03d} GmbH", "date": f"2024-{1 + index % 12:02d}-{1 + index % 28:02d}",
            "total": f"{10 + 3.5 * index:.2f}", "number": f"INV-{1000 + index}",
            "address": f"{index} Main Street"}


def reference_text(index: int) -> str:
    return json.dumps(reference_fields(index))


def _add_field_detail(rows: list[dict], rng: np.random.Generator) -> None:
    """Which fields each row got right (its field_tp of them), their ANLS, and the document kind.
    A wrong value is one character off (ANLS 1 - 1/len); an invalid JSON answer scores 0."""
    for i, row in enumerate(rows):
        hits = set(rng.permutation(N_FIELDS)[:row["field_tp"]].tolist())
        values = reference_fields(i)
        scores = {}
        for k, name in enumerate(FIELD_NAMES):
            valid = bool(row["json_valid"])
            anls = 1.0 if k in hits else (1.0 - 1.0 / len(values[name]) if valid else 0.0)
            scores[name] = {"tp": int(k in hits), "pred": int(valid), "ref": 1, "anls": anls}
        row["field_scores"] = scores
        row["field_anls_sum"] = sum(c["anls"] for c in scores.values())
        row["kind"] = sample_kind(i)


def prediction_text(index: int, row: dict) -> str:
    """A prediction consistent with a detail row: missed fields have their first character changed,
    an invalid answer is cut short."""
    values = reference_fields(index)
    for name, score in row["field_scores"].items():
        if not score["tp"]:
            v = values[name]
            values[name] = ("X" if v[0] != "X" else "Y") + v[1:]
    text = json.dumps(values)
    return text if row["json_valid"] else text[:-12]


def make_spec(framework: str, alignment: str, seed: int, suite: str = "default",
              extra_cell: dict | None = None) -> dict:
    native_alpha = {"peft": 8, "swift": 32, "torch": 16}
    return {
        "suite": suite, "framework": framework, "alignment": alignment, "seed": seed,
        "model": {"name": "lorabench-tiny-qwen2vl"}, "dataset": {"name": "synthdocs", "split": "test"},
        "lora": {"r": 8, "alpha": 16 if alignment == "aligned" else native_alpha.get(framework, 16),
                 "dropout": 0.0, "targets": "all-linear"},
        "train": {"max_steps": 20, "batch_size": 4, "lr": 1e-4},
        "world_size": 1, **(extra_cell or {}),
    }


def make_record(framework: str = "peft", alignment: str = "aligned", seed: int = 0, *,
                suite: str = "default", status: str = "ok", error: str | None = None,
                n_steps: int = 20, n_samples: int = 40, extra_cell: dict | None = None,
                env: dict | None = None, started_at: str = "2026-01-05T10:00:00Z",
                detail: bool = False, **profile_overrides) -> tuple[dict, list[dict]]:
    """One record and its per-sample rows ([] when not ok). `profile_overrides` are PROFILES keys.

    detail: also the newer keys (eval.per_field, eval.per_kind, field_anls; per-sample kind and
    field_scores; `write_run` then writes predictions with reference and image)."""
    profile = {**PROFILES.get((framework, alignment), DEFAULT_PROFILE), **profile_overrides}
    spec = make_spec(framework, alignment, seed, suite, extra_cell)
    digest = spec_hash(spec)
    run_id = f"{suite}-{digest[:10]}"
    rng = _rng(framework, alignment, seed, json.dumps(extra_cell or {}, sort_keys=True), "train")
    cell = {"framework": framework, "alignment": alignment, "seed": seed, **(extra_cell or {})}
    record: RunRecord = {
        "schema_version": SCHEMA_VERSION, "run_id": run_id, "suite": suite, "spec_hash": digest,
        "spec": spec, "cell": cell, "status": status,
        "error": None if status == "ok" else (error or "RuntimeError: synthetic failure"),
        "started_at": started_at, "finished_at": started_at, "wall_s": 0.0,
        "command": f"lorabench run suites/{suite}.yaml",
        "env": env or make_env(),
        "effective_settings": {"lora.r": 8, "lora.alpha": spec["lora"]["alpha"], "optimizer": "AdamW"},
        "per_sample_file": None,
    }
    if status != "ok":
        record["wall_s"] = 3.0
        return record, []

    samples_per_s = profile["samples_per_s"] * (1 + 0.03 * rng.standard_normal())
    batch = spec["train"]["batch_size"]
    step_s = batch / samples_per_s
    base_loss = 2.0 + 0.5 * profile["char_err"] * 10
    steps = []
    for step in range(1, n_steps + 1):
        loss = base_loss * np.exp(-step / 7.0) + 0.3 + 0.02 * rng.standard_normal()
        steps.append({"step": step, "loss": float(loss), "lr": 1e-4, "grad_norm": float(1 + rng.random()),
                      "tokens": batch * 128, "samples": batch,
                      "seconds": float(step_s * (1 + 0.05 * rng.standard_normal()))})
    rows = make_per_sample(framework, alignment, seed, n_samples,
                           profile["char_err"], profile["field_hit"], detail=detail)
    quality_summary = quality.summarize(rows, n_boot=200, seed=0)
    quality_summary.pop("n")
    train_s = sum(s["seconds"] for s in steps[2:])
    samples = batch * (n_steps - 2)
    rss = profile["rss_mib"] * (1 + 0.02 * rng.standard_normal())
    eval_s = 5.0 + rng.random()
    wall_s = 10.0 + train_s + eval_s
    record.update({
        "wall_s": wall_s,
        "train": {"steps": steps, "warmup_steps_excluded": 2, "setup_s": 4.0, "train_s": train_s},
        "eval": {"task": "extract", "split": "test", "n": n_samples, "seconds": eval_s,
                 "predictions_file": f"{run_id}.predictions.jsonl"},
        "metrics": {
            **quality_summary,
            "final_loss": steps[-1]["loss"],
            "train_samples_per_s": samples / train_s, "train_tokens_per_s": samples * 128 / train_s,
            "step_time_s_median": float(np.median([s["seconds"] for s in steps[2:]])),
            "step_time_s_iqr": float(np.subtract(*np.percentile([s["seconds"] for s in steps[2:]], [75, 25]))),
            "mfu": 0.01 * samples_per_s,
            "peak_rss_mib": rss, "peak_rss_above_baseline_mib": rss - 500.0,
            "gpu_max_allocated_mib": None, "gpu_max_reserved_mib": None,
            "eval_s": eval_s, "wall_s": wall_s,
        },
        "memory": {"world_size": 1, "zero_stage": None, "offload_optimizer": False, "offload_params": False,
                   "baseline_rss_mib": 500.0,
                   "per_rank": [{"rank": 0, "peak_rss_mib": rss, "peak_rss_above_baseline_mib": rss - 500.0,
                                 "ru_maxrss_mib": rss + 10, "gpu_max_allocated_mib": None,
                                 "gpu_max_reserved_mib": None}]},
        "per_sample_file": f"{run_id}.per_sample.jsonl",
    })
    if detail:
        record["eval"]["per_field"] = quality.per_field_scores(rows)
        record["eval"]["per_kind"] = quality.per_kind_scores(rows)
    return record, rows


def write_run(results_dir: str | Path, record: dict, rows: list[dict]) -> Path:
    """Write a record plus its per-sample and predictions files, as the runner lays them out."""
    path = write_record(results_dir, record)
    if record.get("per_sample_file"):
        quality.write_per_sample(rows, path.parent / record["per_sample_file"])
        detail = bool(rows) and "field_scores" in rows[0]
        with open(path.parent / record["eval"]["predictions_file"], "w", encoding="utf-8") as fh:
            for i, row in enumerate(rows):
                line = {"id": row["id"], "prediction": "synthetic"}
                if detail:
                    image = write_test_image(Path(results_dir) / "images", row["id"])
                    line = {"id": row["id"], "prediction": prediction_text(i, row),
                            "reference": reference_text(i), "image": str(image.resolve())}
                fh.write(json.dumps(line) + "\n")
    return path


def write_test_image(image_dir: Path, sample_id: str) -> Path:
    """A small PNG standing in for a test document (written once per id)."""
    from PIL import Image, ImageDraw

    path = image_dir / f"{sample_id}.png"
    if not path.exists():
        image_dir.mkdir(parents=True, exist_ok=True)
        image = Image.new("RGB", (160, 60), "white")
        ImageDraw.Draw(image).text((8, 22), sample_id, fill="black")
        image.save(path)
    return path


def write_suite(results_dir: str | Path, frameworks=FRAMEWORKS, alignments=ALIGNMENTS, seeds=SEEDS,
                *, failed: dict | None = None, **kwargs) -> list[dict]:
    """Write the full matrix; `failed` maps (framework, alignment, seed) -> error text for runs that
    fail. Other kwargs go to `make_record`. Returns the records written."""
    failed = failed or {}
    records = []
    for framework in frameworks:
        for alignment in alignments:
            for seed in seeds:
                key = (framework, alignment, seed)
                if key in failed:
                    record, rows = make_record(framework, alignment, seed, status="failed",
                                               error=failed[key], **kwargs)
                else:
                    record, rows = make_record(framework, alignment, seed, **kwargs)
                write_run(results_dir, record, rows)
                records.append(record)
    return records
