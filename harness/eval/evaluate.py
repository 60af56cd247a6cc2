"""The one framework-neutral evaluation: samples -> greedy generation -> references -> metrics.

Every caller uses it: the eval worker of a run, `lorabench model eval`, and the tiny model's build
(its model card). Whatever framework trained the adapter, the harness loads the base model and the
saved PEFT-format adapter itself and generates with the same code, with the system prompt the run
actually trained with (read back from the trainer by the adapter, not copied from the request).
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Callable, Sequence

from harness.chat import TEMPLATE_DEFAULT


@dataclasses.dataclass
class EvalResult:
    predictions: list[dict]  # {"id", "prediction", "reference", "image"} per sample, in sample order
    per_sample: list[dict]  # harness.eval.metrics.per_sample rows
    metrics: dict  # corpus metrics with bootstrap intervals (`lorabench score --json`)
    per_field: dict  # field name -> n, precision, recall, f1, anls (extraction only)
    per_kind: dict  # document kind -> corpus metrics (when the samples carry a kind)
    seconds: float  # generation time

    def write(self, out_dir: Path) -> None:
        """predictions.jsonl and per_sample.jsonl in out_dir."""
        from harness.eval import metrics as scoring

        with open(out_dir / "predictions.jsonl", "w") as f:
            for row in self.predictions:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        scoring.write_per_sample(self.per_sample, out_dir / "per_sample.jsonl")


def system_prompt(setting: str | None) -> str | None:
    """The system turn for a `system_prompt` setting as recorded in effective settings ("default":
    the model family's template default)."""
    return None if setting == "none" else TEMPLATE_DEFAULT


def references(samples: Sequence) -> list[dict]:
    """Scoring references of `Sample`s: text, fields for extraction, kind when known."""
    refs = []
    for s in samples:
        ref = {"id": s.id, "text": s.target}
        if s.task == "extract" and s.fields is not None:
            ref["fields"] = s.fields
        if s.kind is not None:
            ref["kind"] = s.kind
        refs.append(ref)
    return refs


def evaluate(model_dir, samples: Sequence, *, adapter_dir=None, system=TEMPLATE_DEFAULT,
             answer_prefix: str = "template", device: str = "cpu", max_new_tokens: int = 320, batch_size: int = 16,
             n_boot: int = 1000,
             progress: Callable[[int], None] | None = None, model=None, processor=None) -> EvalResult:
    """Generate greedily for `samples` on the base model (+ adapter) and score the answers.

    `model`/`processor` may be passed in (an already loaded model); otherwise they are loaded from
    `model_dir` with the adapter merged. Scores: CER/WER/exact match, and for extraction field
    P/R/F1, ANLS and JSON validity, with per-field and per-kind tables.
    """
    from PIL import Image

    from harness.data.pages import fit_canvas, image_canvas
    from harness.eval import metrics as scoring
    from harness.eval.generation import generate_answers, load_model

    if model is None:
        model, processor = load_model(model_dir, adapter_dir, device=device)
    canvas = image_canvas(model_dir)
    images = [fit_canvas(Image.open(s.image).convert("RGB"), canvas) for s in samples]
    t0 = time.perf_counter()
    answers = generate_answers(model, processor, images, [s.prompt for s in samples], system=system,
                               answer_prefix=answer_prefix, max_new_tokens=max_new_tokens, batch_size=batch_size,
                               progress=progress)
    seconds = time.perf_counter() - t0
    refs = references(samples)
    predictions = [{"id": s.id, "prediction": a, "reference": s.target, "image": str(Path(s.image).resolve())}
                   for s, a in zip(samples, answers)]
    rows = scoring.per_sample(refs, {p["id"]: p["prediction"] for p in predictions})
    return EvalResult(predictions=predictions, per_sample=rows, metrics=scoring.summarize(rows, n_boot=n_boot),
                      per_field=scoring.per_field_scores(rows), per_kind=scoring.per_kind_scores(rows),
                      seconds=seconds)
