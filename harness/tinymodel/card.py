"""The model card (README.md) of an embedded tiny model, written from its lorabench.json meta: what it
is, how the forge trained it, and the quality measured on the test split and during the build."""

from __future__ import annotations

from pathlib import Path

# test documents the build's quality curve is measured on (each point costs ~15 s on 2 cores)
EVAL_DOCS_DURING_TRAINING = 40

CARD_TEXT = {
    "qwen2vl": {
        "title": "tiny Qwen2-VL", "class": "Qwen2VLForConditionalGeneration", "command": "lorabench model build",
        "architecture": [], "reading": "the vision merger's output",
        "tokenizer": "Character-level tokenizer with the Qwen2-VL special tokens at ids 0-6."},
    "minicpmv": {
        "title": "tiny MiniCPM-V", "class": "MiniCPMV4_6ForConditionalGeneration",
        "command": "lorabench model build --family minicpmv",
        "architecture": [
            "MiniCPM-V 4.6's architecture, every part made tiny: a SigLIP-style vision encoder on 8 px patches,",
            "the window-attention merger (in the checkpoint; the model runs in MiniCPM-V's \"4x\" downsample mode,",
            "which skips it), the downsampling merger (kernel 2 x 2: one language-model token per 16 px cell of",
            "the page grid, one character each) and a Qwen3.5 text backbone with",
            "full attention in every layer and its own lm_head. MiniCPM-V's processor (no slicing) resizes every",
            "image to one area; pages are padded with white to its 640 x 128 canvas, a fixed point of that resize,",
            "so the 16 px grid holds. ms-swift trains it with its own `minicpmv4_6` model type and template",
            "(with `DOWNSAMPLE_MODE=4x`, which the swift adapter sets from config.json).", ""],
        "reading": "the downsampling merger's output (the 16 px cells)",
        "tokenizer": "Character-level tokenizer with MiniCPM-V's special tokens (`<|image_pad|>`, `<image>`, "
                     "`<image_id>`, `<slice>`, `<think>`, ...) at ids 0-12."},
}


def _curriculum_canvas_lines(meta: dict) -> list[str]:
    """For a model that reads on a fixed canvas: where its curriculum's pages were drawn."""
    if meta.get("family") != "minicpmv":
        return []
    from harness.tinymodel import minicpmv

    steps = meta["forge"]["curriculum_steps"]
    small = minicpmv.small_canvas_steps(steps)
    width, height = minicpmv.IMAGE_CANVAS
    return [f"Curriculum canvas: its first {small:,} steps pad the pages to {width} x "
            f"{minicpmv.CURRICULUM_ROWS * minicpmv.ROW_PX} ({minicpmv.CURRICULUM_ROWS} rows) and feed them at "
            "that size, so that a batch holds 18-36 text lines (the 8-row canvas holds 4 pages); its last "
            f"{steps - small:,} steps are on the {width} x {height} canvas, before full pages.", ""]


def write_model_card(path: Path, meta: dict) -> None:
    p, q, f = meta["params"], meta.get("base_quality", {}), meta["forge"]
    tr, ex, fj = q.get("transcribe", {}), q.get("extract", {}), q.get("fill_json", {})
    pre = meta["pretrain"]
    mix = ", ".join(f"{t} {w:.0%}" for t, w in f["task_weights"])
    card = CARD_TEXT[meta.get("family", "qwen2vl")]
    lines = [
        f"# lorabench {card['title']}", "",
        f"A `{card['class']}` built from a config and pre-trained locally by `{card['command']}`.",
        "It exists so that LoRA fine-tuning starts from a model that reads and follows instructions, like a real",
        "VLM does; it is not a useful OCR model.", "", *card["architecture"],
        "## Parameters", "",
        "| part | parameters |", "|---|---:|",
        f"| vision tower | {p['vision_tower']:,} |", f"| projector (merger) | {p['projector']:,} |",
        f"| language model | {p['language_model']:,} |", f"| total | {p['total']:,} |", "",
        "## Training", "",
        f"Full training of all weights from random initialisation: {pre['steps']:,} steps in "
        f"{pre['seconds'] / 60:.0f} min ({meta['torch_threads']} torch threads, {meta.get('device', 'cpu')}) on the "
        f"`{meta['card']}` card's pretrain split plus {f['random_pages']:,} pages of random characters and "
        f"{f['label_pages']:,} pages of random `Label: value` lines. AdamW lr {f['lr']}, {f['warmup_steps']} warm-up "
        f"steps, linear decay to 10% over the last {f['decay_fraction']:.0%} of the steps, batches of "
        f"{f['batch_lines']} text lines; an auxiliary CTC head reads {card['reading']} row by row "
        f"(dropped at export). {card['tokenizer']}", "",
        f"Tasks: the first {f['curriculum_steps']:,} steps read pages of 1-{f['curriculum_max_rows']} "
        f"rows (`Read all text.`); then every page gets one task, drawn as {mix}: `read` (all text), `read_json` "
        "(`Read all lines as JSON.` -> `{\"l1\":...}`), `fill_json` (`Fill JSON {\"qa\":\"Born\",\"zt\":\"line 2\"}` -> "
        "the value after each printed label or the line, under random keys) and `ask` (`What is \"Born\"?`). "
        "The `extract` task of the benchmark (its prompt, its field names, which label feeds which field) is never "
        "seen here: that is what LoRA has to learn.", "",
        *_curriculum_canvas_lines(meta),
        *_instruction_stage_lines(meta),
        "## Measured base quality (greedy, test split, no adapter)", "",
        "| task | n | CER | WER | exact match | field F1 | JSON valid |", "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for task, s in (("transcribe", tr), ("extract", ex)):
        if s:
            lines.append(f"| {task} | {s['n']} | {s['cer']:.4f} | {s['wer']:.4f} | {s['exact_match']:.3f} | "
                         f"{s.get('field_f1', float('nan')):.3f} | {s.get('json_valid_rate', float('nan')):.3f} |")
    if fj:
        lines += ["", f"`fill_json` on {fj['n']} test pages (one schema of 1-4 random keys each): whole object right "
                  f"{fj['fill_json_exact']:.3f}, values right {fj['fill_json_value_accuracy']:.3f}, valid JSON "
                  f"{fj['fill_json_valid']:.3f}."]
    kv = q.get("read_kv")
    if kv:
        lines += ["", f"`read_kv` on {kv['n']} test pages: whole object exactly right {kv['exact']:.3f}."]
    stages = [("reading stage", pre.get("curve") or [], 0.0)]
    if meta.get("instruction"):
        reading_minutes = pre["seconds"] / 60
        stages.append(("instruction stage", meta["instruction"]["pretrain"].get("curve") or [], reading_minutes))
    if any(curve for _, curve, _ in stages):
        lines += ["", "## Quality against pre-training time", "",
                  f"Measured during the build on the first {EVAL_DOCS_DURING_TRAINING} test documents (greedy); "
                  "minutes count from the start of the reading stage:", "",
                  "| stage | step | minutes | read CER | read exact | read_kv exact | fill_json exact | fill_json values |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|"]
        for name, curve, offset in stages:
            lines += [f"| {name} | {c['step']:,} | {offset + c['minutes']:.0f} | {c['cer']:.4f} | {c['exact_match']:.2f} | "
                      f"{_fmt(c.get('read_kv_exact'))} | {c['fill_json_exact']:.2f} | {c['fill_json_value_accuracy']:.2f} |"
                      for c in curve]
    minutes = pre["seconds"] / 60 + (meta["instruction"]["pretrain"]["seconds"] / 60 if meta.get("instruction") else 0)
    lines += ["", f"Pre-training time, all stages: {minutes:.0f} min. Key: `{meta['key'][:16]}`. "
              f"Weights sha256: `{meta.get('checksum', '')[:16]}`.", "",
              "## Limits", "",
              "Pages must be drawn on the 16 px token grid (one line per row, at most 32 characters, the `easy` "
              "style); the model reads nothing else. Reproduce the figures above with "
              "`lorabench model eval <this directory> --task transcribe` (and `--task extract`).", ""]
    (path / "README.md").write_text("\n".join(lines))


def _fmt(value) -> str:
    return "—" if value is None else f"{value:.2f}"


def _instruction_stage_lines(meta: dict) -> list[str]:
    stage = meta.get("instruction")
    if not stage:
        return []
    f, pre = stage["forge"], stage["pretrain"]
    mix = ", ".join(f"{t} {w:.0%}" for t, w in f["task_weights"])
    return [
        f"Instruction stage, continuing the reading stage's weights: {pre['steps']:,} steps in "
        f"{pre['seconds'] / 60:.0f} min, AdamW lr {f['lr']} ({f['warmup_steps']} warm-up steps, the same decay), a "
        f"fresh CTC head trained alone for its first {meta.get('ctc_probe_steps', 0)} steps, tasks drawn as {mix}. "
        "The new task `read_kv` (`Read all lines as JSON, labels as keys.`) writes each `Label: value` line under its "
        "printed label and any other line under its number (`{\"l1\":\"NATIONAL ID CARD\",\"Surname\":\"BROWN\",...}`): "
        "the page's own labels, not the `extract` schema's field names.", ""]
