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

    tiny_model = family_module(plan.family)
    canvas = getattr(tiny_model, "IMAGE_CANVAS", None)
    t0 = time.perf_counter()
    data_dir = ensure_built(plan.card)
    pretrain = load_samples(split_file(data_dir, "pretrain", "transcribe"))
    eval_pages = _test_pages(data_dir, EVAL_DOCS_DURING_TRAINING, canvas)
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
            model, processor, forge.build_pool(pretrain, cfg), cfg, device=device,
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


def _test_pages(data_dir: Path, n: int, canvas: tuple[int, int] | None = None):
    """The first n test documents as forge pages (image + lines), for reading and structure checks."""
    from PIL import Image

    from harness.data.pages import fit_canvas
    from harness.data.samples import load_samples, split_file
    from harness.tinymodel.forge import Page, labelled_pairs

    samples = load_samples(split_file(data_dir, "test", "transcribe"))[:n]
    return [Page(fit_canvas(Image.open(s.image).convert("RGB"), canvas), tuple(s.text.split("\n")),
                 labelled_pairs(s.text.split("\n"))) for s in samples]


def reading_and_structure(model, processor, pages) -> dict:
    """CER of `read`, exact `read_kv` and the `fill_json` scores on held-out pages."""
    from harness.eval import metrics as metrics
    from harness.tinymodel.forge import READ_KV_PROMPT, READ_PROMPT, structured_items
    from harness.eval.generation import generate_answers

    images = [p.image for p in pages]
    reads = generate_answers(model, processor, images, [READ_PROMPT] * len(pages))
    refs = [{"id": str(i), "text": "\n".join(p.lines)} for i, p in enumerate(pages)]
    read_scores = metrics.score(refs, [{"id": str(i), "prediction": r} for i, r in enumerate(reads)], n_boot=10)
    items = structured_items(pages)
    fills = generate_answers(model, processor, images, [prompt for prompt, _ in items], max_new_tokens=160)
    kvs = generate_answers(model, processor, images, [READ_KV_PROMPT] * len(pages), max_new_tokens=200)
    return {"n": len(pages), "cer": read_scores["cer"], "exact_match": read_scores["exact_match"],
            "read_kv_exact": read_kv_exact(kvs, pages),
            **fill_json_scores(fills, [answer for _, answer in items])}


def read_kv_exact(predictions: list[str], pages) -> float:
    """Share of pages whose `read_kv` answer parses to exactly the labelled-lines object."""
    from harness.tinymodel.forge import labelled_lines

    def parsed(text):
        try:
            return json.loads(text)
        except ValueError:
            return None

    return sum(parsed(p) == labelled_lines(page) for p, page in zip(predictions, pages)) / max(1, len(pages))


def fill_json_scores(predictions: list[str], answers: list[str]) -> dict:
    """`fill_json` accuracy: the whole object right, each value right, and parseable JSON."""
    exact = values_right = values = valid = 0
    for pred, answer in zip(predictions, answers):
        want = json.loads(answer)
        try:
            got = json.loads(pred)
        except ValueError:
            got = None
        got = got if isinstance(got, dict) else None
        valid += got is not None
        exact += got == want
        values += len(want)
        values_right += sum((got or {}).get(k) == v for k, v in want.items())
    n = max(1, len(answers))
    return {"fill_json_exact": exact / n, "fill_json_value_accuracy": values_right / max(1, values),
            "fill_json_valid": valid / n}


def measure_quality(model_dir: Path, data_dir: Path, max_samples: int = 200) -> dict:
    """Greedy CER/WER on test/transcribe, field F1 on test/extract (no adapter), fill_json scores."""
    from harness.data.samples import load_samples, split_file
    from harness.eval.evaluate import evaluate
    from harness.eval.generation import generate_answers, load_model
    from harness.tinymodel.forge import READ_KV_PROMPT, structured_items

    model, processor = load_model(model_dir)
    out = {}
    for task in ("transcribe", "extract"):
        samples = load_samples(split_file(data_dir, "test", task))[:max_samples]
        result = evaluate(model_dir, samples, n_boot=200, model=model, processor=processor)
        out[task] = {**result.metrics, "eval_s": result.seconds}
    t = time.perf_counter()
    from harness.data.pages import image_canvas

    pages = _test_pages(data_dir, max_samples, image_canvas(model_dir))
    items = structured_items(pages)
    images = [p.image for p in pages]
    fills = generate_answers(model, processor, images, [prompt for prompt, _ in items], max_new_tokens=160)
    out["fill_json"] = {"n": len(pages), **fill_json_scores(fills, [a for _, a in items]),
                        "eval_s": time.perf_counter() - t}
    t = time.perf_counter()
    kvs = generate_answers(model, processor, images, [READ_KV_PROMPT] * len(pages), max_new_tokens=200)
    out["read_kv"] = {"n": len(pages), "exact": read_kv_exact(kvs, pages), "eval_s": time.perf_counter() - t}
    return out


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
