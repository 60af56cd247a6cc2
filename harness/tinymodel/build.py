"""Model specs -> local checkpoint directories: the embedded tiny models (built, cached, committed)
or a user's checkpoint.

Two embedded models, one per family, built and taught by the same forge: `tiny` (Qwen2-VL
architecture, harness/assets/tiny-qwen2vl) and `tiny-minicpmv` (MiniCPM-V 4.6 architecture,
harness/assets/tiny-minicpmv). A build is keyed by a hash of everything that decides its weights:
family and architecture preset, tokenizer alphabet, the pre-training data card's checksum, the forge
recipe, the seed and FORGE_VERSION. A committed copy carries its key; when the key matches, a fresh
clone uses it and skips pre-training. `lorabench model build --force` rebuilds into .cache/models/
and re-measures the quality, so the committed figures can be checked.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import time
from pathlib import Path

from harness.errors import UserError
from harness.paths import ASSETS_DIR, CACHE_DIR as CACHE_ROOT
from harness.tinymodel.card import EVAL_DOCS_DURING_TRAINING
from harness.tinymodel.quality import measure_quality, reading_and_structure, held_out_pages

# bump when harness.tinymodel.forge / harness.tinymodel.architecture change what the reading stage produces
FORGE_VERSION = 2
INSTRUCTION_VERSION = 1  # bump when the instruction stage's recipe changes what it produces
ASSET_DIR = ASSETS_DIR / "tiny-qwen2vl"
CACHE_DIR = CACHE_ROOT / "models"
PRETRAIN_CARD = "synthdocs"
# family -> (the module that builds it, its committed directory, its name in a spec's `model`)
FAMILIES = {
    "qwen2vl": ("harness.tinymodel.architecture", ASSET_DIR, "tiny"),
    "minicpmv": ("harness.tinymodel.minicpmv", ASSETS_DIR / "tiny-minicpmv", "tiny-minicpmv"),
}
EMBEDDED_MODELS = {name: family for family, (_, _, name) in FAMILIES.items()}


def family_module(family: str):
    """The module that builds a family's untrained model (build_untrained, PRESETS, param_counts, ...)."""
    import importlib

    return importlib.import_module(FAMILIES[family][0])


@dataclasses.dataclass(frozen=True)
class BuildPlan:
    family: str = "qwen2vl"  # a key of FAMILIES
    preset: str = "tiny"
    card: str = PRETRAIN_CARD
    seed: int = 0
    steps: int | None = None  # None = the forge default
    random_pages: int | None = None  # None = the forge default (quick test builds use fewer)
    label_pages: int | None = None
    instruction_steps: int | None = None  # None = the instruction stage's default; 0 = reading stage only

    def forge_config(self):
        """The reading stage: from random weights to a model that reads (and writes simple JSON)."""
        from harness.tinymodel.forge import ForgeConfig

        overrides = {**FAMILY_READING.get(self.family, {}),
                     **{k: v for k, v in (("steps", self.steps), ("random_pages", self.random_pages),
                                          ("label_pages", self.label_pages)) if v is not None}}
        if self.steps is not None and "curriculum_steps" in FAMILY_READING.get(self.family, {}):
            overrides["curriculum_steps"] = min(overrides["curriculum_steps"], self.steps)
        return dataclasses.replace(ForgeConfig(seed=self.seed), **overrides)

    def instruction_config(self):
        """The instruction stage, continuing the reading stage's weights; None when switched off."""
        from harness.tinymodel.forge import ForgeConfig

        if self.instruction_steps == 0:
            return None
        reading = self.forge_config()
        return ForgeConfig(
            steps=self.instruction_steps or FAMILY_INSTRUCTION_STEPS.get(self.family, INSTRUCTION_STEPS), lr=5e-4,
            warmup_steps=50, seed=self.seed,
            random_pages=reading.random_pages, label_pages=reading.label_pages, curriculum_steps=0,
            task_weights=(("read", 0.3), ("read_json", 0.1), ("read_kv", 0.4), ("fill_json", 0.1), ("ask", 0.1)))


# ~1.5 s a step on 2 CPU cores: ~35 min. Reading stays 30% of the mix (a third try that gave half the
# batches to a new task lost reading accuracy: CER 0.003 -> 0.029).
INSTRUCTION_STEPS = 1400
# The same recipe at a smaller budget for the tiny MiniCPM-V: 0.7 s a curriculum step on its 2-row
# canvas, about 1.3 s a step on the 8-row one, so 2,800 + 600 steps (~55 min) leave room in one
# 3-hour session for its suite and ablation. Its curriculum is longer (1,700 steps: 1,400 on the
# 2-row canvas, 300 on the 8-row one; see harness.tinymodel.minicpmv). `--steps` /
# `--instruction-steps` run more.
FAMILY_READING = {"minicpmv": {"steps": 2800, "curriculum_steps": 1700}}
FAMILY_INSTRUCTION_STEPS = {"minicpmv": 600}
# The instruction stage starts a fresh CTC head on the trained vision tower; it trains alone for this
# many steps so that its random start sends no noise into the tower.
CTC_PROBE_STEPS = 200


def reading_key(plan: BuildPlan, card_checksum: str | None) -> str:
    module = family_module(plan.family)
    payload = {
        "forge_version": FORGE_VERSION, "preset": dataclasses.asdict(module.PRESETS[plan.preset]),
        "forge": dataclasses.asdict(plan.forge_config()), "card": plan.card, "card_checksum": card_checksum,
    }
    if plan.family != "qwen2vl":  # (the Qwen2-VL keys predate families: unchanged)
        payload["family"] = plan.family
        payload["image_canvas"] = getattr(module, "IMAGE_CANVAS", None)
        if hasattr(module, "curriculum_canvas"):
            payload["curriculum_canvas"] = [module.CURRICULUM_ROWS, module.CANVAS_CURRICULUM_STEPS]
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def build_key(plan: BuildPlan, card_checksum: str | None) -> str:
    """The key of the finished model: the reading stage's key, then the instruction stage's recipe."""
    first = reading_key(plan, card_checksum)
    second = plan.instruction_config()
    if second is None:
        return first
    payload = {"reading_key": first, "instruction_version": INSTRUCTION_VERSION,
               "instruction": dataclasses.asdict(second), "ctc_probe_steps": CTC_PROBE_STEPS}
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


def cache_dir(plan: BuildPlan, key: str) -> Path:
    prefix = "" if plan.family == "qwen2vl" else f"{plan.family}-"
    return CACHE_DIR / f"{prefix}{plan.preset}-{key[:12]}"


def tiny_checkpoint(plan: BuildPlan = BuildPlan()) -> Path:
    """The built tiny model for `plan`: the committed copy when its key matches, else the cache."""
    from harness.data.cards import load_card

    key = build_key(plan, load_card(plan.card).checksum)
    for candidate in (FAMILIES[plan.family][1], cache_dir(plan, key)):
        meta = _meta(candidate)
        if meta and meta.get("key") == key:
            return candidate
    flag = "" if plan.family == "qwen2vl" else f" --family {plan.family}"
    raise UserError(f"the embedded model {FAMILIES[plan.family][2]!r} is not built for this code version: run "
                    f"`lorabench model build{flag}`" + (" (or `make model`)" if not flag else ""))


class ForgePaused(Exception):
    """Pre-training stopped before its last step; the state is saved and `--resume` continues it."""

    def __init__(self, step: int, steps: int, state_path: Path):
        super().__init__(f"pre-training paused at step {step} of {steps} (state in {state_path}); "
                         "run the same command with --resume to continue")
        self.step, self.steps, self.state_path = step, steps, state_path




def build_tiny_model(plan: BuildPlan, out_dir: Path | None = None, force: bool = False, progress: bool = True, *,
          resume: bool = False, stop_after_minutes: float | None = None, device: str = "cpu",
          eval_every: int = 1000, quality_samples: int = 200) -> tuple[Path, dict]:
    """Build (or reuse) the tiny checkpoint; returns its directory and its lorabench.json meta.

    The whole training state is saved beside the output every few minutes (`<out>.forge-state.pt`);
    `resume=True` continues from it, `stop_after_minutes` stops early on purpose (ForgePaused), so a
    long build can run in parts or survive an interruption. `quality_samples` test documents measure
    the model card's figures (quick test builds use a few).
    """
    from harness.data.cards import ensure_built, load_card
    from harness.data.samples import load_samples, split_file

    card = load_card(plan.card)
    key = build_key(plan, card.checksum)
    if not force and out_dir is None:
        try:
            path = tiny_checkpoint(plan)
            return path, _meta(path)
        except UserError:
            pass
    out = Path(out_dir) if out_dir else cache_dir(plan, key)
    if not force and _meta(out) and _meta(out).get("key") == key:
        return out, _meta(out)

    import torch

    from harness.tinymodel import forge
    from harness.tinymodel.forge_pages import build_pool

    tiny_model = family_module(plan.family)
    canvas = getattr(tiny_model, "IMAGE_CANVAS", None)
    t0 = time.perf_counter()
    data_dir = ensure_built(plan.card)
    pretrain = load_samples(split_file(data_dir, "pretrain", "transcribe"))
    eval_pages = held_out_pages(data_dir, EVAL_DOCS_DURING_TRAINING, canvas)
    out.parent.mkdir(parents=True, exist_ok=True)

    def train(model, processor, cfg, stage_out: Path, stage_key: str, ctc_probe_steps: int = 0) -> dict:
        """One forge stage, with its own resumable state beside `stage_out`."""
        state_path = stage_out.with_name(stage_out.name + ".forge-state.pt")
        if resume and state_path.is_file():
            saved_key = torch.load(state_path, map_location="cpu", weights_only=True).get("key")
            if saved_key != stage_key:
                raise UserError(f"{state_path} belongs to another build (recipe or data changed); "
                                "run without --resume to start over")
        bar = _Bar() if progress else None
        summary = forge.pretrain(
            model, processor, build_pool(pretrain, random_pages=cfg.random_pages, label_pages=cfg.label_pages,
                                         seed=cfg.seed), cfg, device=device,
            on_step=bar.update if bar else None,
            on_eval=lambda m, step: reading_and_structure(m, processor, eval_pages), eval_every=eval_every,
            state_path=state_path, resume=resume,
            stop_after_s=None if stop_after_minutes is None else stop_after_minutes * 60,
            state_extra={"key": stage_key}, ctc_probe_steps=ctc_probe_steps, canvas=canvas,
            curriculum_canvas=(tiny_model.curriculum_canvas(processor, cfg.curriculum_steps)
                               if hasattr(tiny_model, "curriculum_canvas") else None))
        if bar:
            bar.close()
        if not summary["finished"]:
            raise ForgePaused(summary["steps"], cfg.steps, state_path)
        model.to("cpu")
        state_path.unlink(missing_ok=True)
        return summary

    def stage_meta(cfg, summary: dict) -> dict:
        return {"forge": dataclasses.asdict(cfg),
                "pretrain": {k: v for k, v in summary.items() if k not in ("loss_every_50_steps", "finished")}}

    reading_cfg, instruction_cfg = plan.forge_config(), plan.instruction_config()
    if instruction_cfg is None:  # reading stage only, straight into `out`
        pretrain_alphabet = tiny_model.alphabet_from_texts(s.text for s in pretrain)
        model, processor = tiny_model.build_untrained(pretrain_alphabet, tiny_model.PRESETS[plan.preset], plan.seed)
        summary = train(model, processor, reading_cfg, out, key)
        meta = {"key": key, **stage_meta(reading_cfg, summary)}
    else:
        # the reading stage is a checkpoint of its own (cached under its key), so that a change to the
        # instruction stage does not cost the reading stage's hour and a half again
        first_key = reading_key(plan, card.checksum)
        first_dir = cache_dir(plan, first_key)
        if force or (_meta(first_dir) or {}).get("key") != first_key:
            alphabet = tiny_model.alphabet_from_texts(s.text for s in pretrain)
            model, processor = tiny_model.build_untrained(alphabet, tiny_model.PRESETS[plan.preset], plan.seed)
            summary = train(model, processor, reading_cfg, first_dir, first_key)
            first_meta = {"key": first_key, "stage": "reading", "preset": plan.preset,
                          **stage_meta(reading_cfg, summary)}
            _save(tiny_model, model, processor, first_dir, first_meta, summary)
        first_meta = _meta(first_dir)
        from harness.eval.generation import load_model

        model, processor = load_model(first_dir)  # the same start whether just trained or cached
        summary = train(model, processor, instruction_cfg, out, key, ctc_probe_steps=CTC_PROBE_STEPS)
        meta = {"key": key, "forge": first_meta["forge"], "pretrain": first_meta["pretrain"],
                "reading_key": first_key, "instruction": stage_meta(instruction_cfg, summary),
                "ctc_probe_steps": CTC_PROBE_STEPS}
    meta.update({"family": plan.family, "image_canvas": canvas, "preset": plan.preset, "forge_version": FORGE_VERSION,
                 "instruction_version": INSTRUCTION_VERSION,
                 "card": plan.card, "card_checksum": card.checksum, "seed": plan.seed,
                 "params": tiny_model.param_counts(model), "torch_threads": torch.get_num_threads(),
                 "device": device, "build_s": None})
    tmp = out.with_name(out.name + ".tmp")
    _save(tiny_model, model, processor, tmp, meta, summary)
    # quality on the held-out test split, measured on the saved checkpoint (what users load)
    meta["base_quality"] = measure_quality(tmp, data_dir, quality_samples)
    meta["build_s"] = time.perf_counter() - t0
    meta["checksum"] = checkpoint_checksum(tmp)
    (tmp / "lorabench.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    from harness.tinymodel.card import write_model_card

    write_model_card(tmp, meta)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out, meta


def _save(tiny_model, model, processor, path: Path, meta: dict, summary: dict) -> None:
    """A plain Hugging Face checkpoint with its lorabench.json and the loss log of its last stage."""
    shutil.rmtree(path, ignore_errors=True)
    tiny_model.save_checkpoint(model, processor, path, extra=meta)
    (path / "pretrain_log.json").write_text(json.dumps(summary["loss_every_50_steps"]) + "\n")


class _Bar:
    """A one-line progress bar over the steps (a line a minute when stderr is not a terminal)."""

    def __init__(self):
        import sys

        self.tty = sys.stderr.isatty()
        self.last = None
        self.first = None

    def update(self, rec: dict, steps: int) -> None:
        import sys

        now = time.perf_counter()
        if self.first is None:
            self.first = (now, rec["step"])
        if self.last is not None and now - self.last < (1.0 if self.tty else 60.0):
            return
        self.last = now
        frac = rec["step"] / steps
        done = rec["step"] - self.first[1]
        eta = (now - self.first[0]) / done * (steps - rec["step"]) / 60 if done else float("nan")
        line = (f"pre-training [{'#' * int(frac * 30):<30}] {frac:4.0%} step {rec['step']}/{steps} "
                f"lm {rec['lm_loss']:.3f} ctc {rec['ctc_loss']:.3f} eta {eta:.0f} min")
        print(("\r" + line) if self.tty else line, end="" if self.tty else "\n", file=sys.stderr, flush=True)

    def close(self) -> None:
        import sys

        if self.tty:
            print(file=sys.stderr)
