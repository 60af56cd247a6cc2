"""How well a tiny model reads and follows instructions: the checks the forge runs during training
and the base quality a finished build records in its card."""

from __future__ import annotations

import json
import time
from pathlib import Path

def held_out_pages(data_dir: Path, n: int, canvas: tuple[int, int] | None = None):
    """The first n test documents as forge pages (image + lines), for reading and structure checks."""
    from PIL import Image

    from harness.data.pages import fit_canvas
    from harness.data.samples import load_samples, split_file
    from harness.tinymodel.forge_pages import Page, labelled_pairs

    samples = load_samples(split_file(data_dir, "test", "transcribe"))[:n]
    return [Page(fit_canvas(Image.open(s.image).convert("RGB"), canvas), tuple(s.text.split("\n")),
                 labelled_pairs(s.text.split("\n"))) for s in samples]


def reading_and_structure(model, processor, pages) -> dict:
    """CER of `read`, exact `read_kv` and the `fill_json` scores on held-out pages."""
    from harness.eval import metrics as metrics
    from harness.tinymodel.forge_pages import READ_KV_PROMPT, READ_PROMPT, structured_items
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
    from harness.tinymodel.forge_pages import labelled_lines

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
    from harness.tinymodel.forge_pages import READ_KV_PROMPT, structured_items

    model, processor = load_model(model_dir)
    out = {}
    for task in ("transcribe", "extract"):
        samples = load_samples(split_file(data_dir, "test", task))[:max_samples]
        result = evaluate(model_dir, samples, n_boot=200, model=model, processor=processor)
        out[task] = {**result.metrics, "eval_s": result.seconds}
    t = time.perf_counter()
    from harness.data.pages import image_canvas

    pages = held_out_pages(data_dir, max_samples, image_canvas(model_dir))
    items = structured_items(pages)
    images = [p.image for p in pages]
    fills = generate_answers(model, processor, images, [prompt for prompt, _ in items], max_new_tokens=160)
    out["fill_json"] = {"n": len(pages), **fill_json_scores(fills, [a for _, a in items]),
                        "eval_s": time.perf_counter() - t}
    t = time.perf_counter()
    kvs = generate_answers(model, processor, images, [READ_KV_PROMPT] * len(pages), max_new_tokens=200)
    out["read_kv"] = {"n": len(pages), "exact": read_kv_exact(kvs, pages), "eval_s": time.perf_counter() - t}
    return out
