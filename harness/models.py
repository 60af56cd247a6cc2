"""Model specs -> local checkpoint directories: the embedded tiny model (built, cached, committed)
or a user's checkpoint.

The tiny model's build is keyed by a hash of everything that decides its weights: architecture
preset, tokenizer alphabet, the pre-training data card's checksum, the forge recipe, the seed and
FORGE_VERSION. A committed copy (harness/assets/tiny-qwen2vl) carries its key; when the key
matches, a fresh clone uses it and skips pre-training. `lorabench model build --force` rebuilds
into .cache/models/ and re-measures the quality, so the committed figures can be checked.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import time
from pathlib import Path

from harness.errors import UserError

FORGE_VERSION = 1  # bump when harness.forge / harness.tiny_model change what a build produces
REPO_ROOT = Path(__file__).resolve().parent.parent
ASSET_DIR = Path(__file__).resolve().parent / "assets" / "tiny-qwen2vl"
CACHE_DIR = REPO_ROOT / ".cache" / "models"
PRETRAIN_CARD = "synthdocs"


@dataclasses.dataclass(frozen=True)
class BuildPlan:
    preset: str = "tiny"
    card: str = PRETRAIN_CARD
    seed: int = 0
    minutes: float | None = None  # None = the forge default
    random_pages: int | None = None  # None = the forge default (quick test builds use fewer)

    def forge_config(self):
        from harness.forge import ForgeConfig

        cfg = ForgeConfig(seed=self.seed)
        if self.minutes is not None:
            cfg = dataclasses.replace(cfg, minutes=self.minutes)
        if self.random_pages is not None:
            cfg = dataclasses.replace(cfg, random_pages=self.random_pages)
        return cfg


def build_key(plan: BuildPlan, card_checksum: str | None) -> str:
    from harness.tiny_model import PRESETS

    payload = {
        "forge_version": FORGE_VERSION, "preset": dataclasses.asdict(PRESETS[plan.preset]),
        "forge": dataclasses.asdict(plan.forge_config()), "card": plan.card, "card_checksum": card_checksum,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def _meta(path: Path) -> dict | None:
    try:
        return json.loads((path / "lorabench.json").read_text())
    except (OSError, ValueError):
        return None


def checkpoint_checksum(path: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(path.glob("*.safetensors")):
        h.update(f.read_bytes())
    return h.hexdigest()


def tiny_checkpoint(plan: BuildPlan = BuildPlan()) -> Path:
    """The built tiny model for `plan`: the committed copy when its key matches, else the cache."""
    from harness.data import load_card

    key = build_key(plan, load_card(plan.card).checksum)
    for candidate in (ASSET_DIR, CACHE_DIR / f"{plan.preset}-{key[:12]}"):
        meta = _meta(candidate)
        if meta and meta.get("key") == key:
            return candidate
    raise UserError("the embedded tiny model is not built for this code version: run `lorabench model build` "
                    "(or `make model`)")


def build(plan: BuildPlan, out_dir: Path | None = None, force: bool = False, progress: bool = True) -> tuple[Path, dict]:
    """Build (or reuse) the tiny checkpoint; returns its directory and its lorabench.json meta."""
    from harness.data import ensure_built, load_card, load_samples, split_path

    card = load_card(plan.card)
    key = build_key(plan, card.checksum)
    if not force and out_dir is None:
        try:
            path = tiny_checkpoint(plan)
            return path, _meta(path)
        except UserError:
            pass
    out = Path(out_dir) if out_dir else CACHE_DIR / f"{plan.preset}-{key[:12]}"
    if not force and _meta(out) and _meta(out).get("key") == key:
        return out, _meta(out)

    import torch

    from harness import forge, tiny_model

    t0 = time.perf_counter()
    data_dir = ensure_built(plan.card)
    pretrain = load_samples(split_path(data_dir, "pretrain", "transcribe"))
    alphabet = tiny_model.alphabet_from_texts(s.text for s in pretrain)
    model, processor = tiny_model.build_untrained(alphabet, tiny_model.PRESETS[plan.preset], plan.seed)
    cfg = plan.forge_config()
    pool = forge.build_pool(pretrain, cfg)
    bar = _Bar(cfg.minutes * 60) if progress else None
    summary = forge.pretrain(model, processor, pool, cfg, on_step=bar.update if bar else None)
    if bar:
        bar.close()
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    meta = {"key": key, "preset": plan.preset, "forge_version": FORGE_VERSION, "card": plan.card,
            "card_checksum": card.checksum, "seed": plan.seed, "forge": dataclasses.asdict(cfg),
            "pretrain": {k: v for k, v in summary.items() if k != "log_every_100"},
            "params": tiny_model.param_counts(model), "torch_threads": torch.get_num_threads(),
            "build_s": None}
    tiny_model.save_checkpoint(model, processor, tmp, extra=meta)
    # quality on the held-out test split, measured on the saved checkpoint (what users load)
    meta["base_quality"] = measure_quality(tmp, data_dir)
    meta["build_s"] = time.perf_counter() - t0
    meta["checksum"] = checkpoint_checksum(tmp)
    (tmp / "lorabench.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    write_model_card(tmp, meta)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out, meta


def measure_quality(model_dir: Path, data_dir: Path, max_samples: int = 200) -> dict:
    """Greedy CER/WER on test/transcribe and field F1 on test/extract (no adapter)."""
    from PIL import Image

    from harness import metrics
    from harness.data import load_samples, split_path
    from harness.generation import generate, load_model

    model, processor = load_model(model_dir)
    out = {}
    for task in ("transcribe", "extract"):
        samples = load_samples(split_path(data_dir, "test", task))[:max_samples]
        images = [Image.open(s.image).convert("RGB") for s in samples]
        t = time.perf_counter()
        preds = generate(model, processor, images, [s.prompt for s in samples])
        refs = [{"id": s.id, "text": s.target, **({"fields": s.fields} if task == "extract" else {})} for s in samples]
        scores = metrics.score(refs, [{"id": s.id, "prediction": p} for s, p in zip(samples, preds)], n_boot=200)
        scores["eval_s"] = time.perf_counter() - t
        out[task] = {k: v for k, v in scores.items()}
    return out


def write_model_card(path: Path, meta: dict) -> None:
    p, q, f = meta["params"], meta.get("base_quality", {}), meta["forge"]
    tr, ex = q.get("transcribe", {}), q.get("extract", {})
    lines = [
        "# lorabench tiny Qwen2-VL", "",
        "A `Qwen2VLForConditionalGeneration` built from a config and pre-trained locally by `lorabench model build`.",
        "It exists so that LoRA fine-tuning has a model that can already read; it is not a useful OCR model.", "",
        "## Parameters", "",
        "| part | parameters |", "|---|---:|",
        f"| vision tower | {p['vision_tower']:,} |", f"| projector (merger) | {p['projector']:,} |",
        f"| language model | {p['language_model']:,} |", f"| total | {p['total']:,} |", "",
        "## Training", "",
        f"Full fine-tuning of all weights for {f['minutes']} min of wall time ({meta['pretrain']['steps']} steps, "
        f"{meta['torch_threads']} torch threads) on the `transcribe` task: the `{meta['card']}` card's pretrain split "
        f"plus {f['random_pages']} pages of random characters; AdamW lr {f['lr']}, {f['warmup_steps']} warm-up steps, "
        f"linear decay over the last {int(f['decay_fraction'] * 100)}% of the time; an auxiliary CTC head on the "
        "vision merger's output, read row by row (dropped at export). Character-level tokenizer with the Qwen2-VL "
        "special tokens at ids 0-6.", "",
        "## Measured base quality (greedy, test split, no adapter)", "",
        "| task | n | CER | WER | exact match | field F1 |", "|---|---:|---:|---:|---:|---:|",
    ]
    for task, s in (("transcribe", tr), ("extract", ex)):
        if s:
            lines.append(f"| {task} | {s['n']} | {s['cer']:.4f} | {s['wer']:.4f} | {s['exact_match']:.3f} | "
                         f"{s.get('field_f1', float('nan')):.3f} |")
    lines += ["", f"Build time: {meta['build_s']:.0f} s. Key: `{meta['key'][:16]}`. "
              f"Weights sha256: `{meta.get('checksum', '')[:16]}`.", "",
              "## Limits", "",
              "Reading is far from perfect: the errors are lost or repeated lines (the language model losing its "
              "place between rows), rarely misread glyphs. The quality against pre-training time, and what was "
              "tried, is in lorabench's docs/models.md. Reproduce the figures above with "
              "`lorabench model eval <this directory> --task transcribe` (and `--task extract`).", ""]
    (path / "README.md").write_text("\n".join(lines))


class _Bar:
    """A one-line progress bar over the time budget (quiet when stderr is not a terminal)."""

    def __init__(self, budget_s: float):
        import sys

        self.tty = sys.stderr.isatty()
        self.budget_s = budget_s
        self.last = 0.0

    def update(self, rec: dict, budget_s: float) -> None:
        import sys

        if rec["elapsed_s"] - self.last < (1.0 if self.tty else 60.0):
            return
        self.last = rec["elapsed_s"]
        frac = min(1.0, rec["elapsed_s"] / budget_s)
        line = (f"pre-training [{'#' * int(frac * 30):<30}] {frac:4.0%} step {rec['step']} "
                f"lm {rec['lm_loss']:.3f} ctc {rec['ctc_loss']:.3f}")
        print(("\r" + line) if self.tty else line, end="" if self.tty else "\n", file=sys.stderr, flush=True)

    def close(self) -> None:
        import sys

        if self.tty:
            print(file=sys.stderr)
