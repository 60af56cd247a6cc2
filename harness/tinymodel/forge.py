"""Pre-train the embedded tiny model to read and to follow instructions ("the forge").

Full training of all weights, from random initialisation, so that LoRA fine-tuning later starts
from a model that behaves like a small real VLM: it reads a page and it writes structured answers
to instructions it has seen in many variants.

Reading (what makes a 2 M-parameter model read at all):
- pages are drawn on the token grid (one text line per 16 px token row, see harness.data.pages);
- an auxiliary CTC head reads each token row of the vision features on the 16 px grid (Qwen2-VL's
  merger output, MiniCPM-V's vision encoder output), on every step. It gives
  the vision tower a direct, per-row reading signal; without it the language model learns the
  text statistics and ignores the image (measured: CER 0.96 after 5 min without CTC, 0.20 with
  it, single lines). The head is dropped at export: the checkpoint is a plain transformers model;
- pages of random characters join the documents (no language prior to shortcut);
- curriculum: pages of one or two rows only for the first steps (the offset between an answer
  character and its image token is then nearly constant), full pages afterwards. A model that reads
  on a fixed canvas starts the curriculum on a smaller one (`curriculum_canvas`), so that a batch
  still holds many text lines.

Instruction following (what makes LoRA on a new extraction schema learnable in minutes; measured:
a reader that never wrote JSON scored field F1 0.000 after 150 LoRA steps on `extract`, one that
had also learnt to write JSON scored 0.234). After the curriculum each page gets one of these tasks:
- `read`       "Read all text."                      -> the lines, joined by newlines;
- `read_json`  "Read all lines as JSON."             -> {"l1":"<line 1>","l2":"<line 2>",...};
- `read_kv`    "Read all lines as JSON, labels as keys." -> {"l1":"<line 1>","Born":"<value>",...}: a
               "Label: value" line under its printed label, any other line under its number;
- `fill_json`  'Fill JSON {"qa":"Born","zt":"line 2"}' -> {"qa":"<value after 'Born:'>","zt":"<line 2>"}
               keys are random words, each pointing at a printed label or at a line number;
- `ask`        'What is "Born"?' / 'What is line 2?'   -> the value / the line.
Labels come from the page itself ("Label: value" lines of the documents, and pages of random
labels), so nothing here names a field of the `extract` task: its key set, its prompt and its
label-to-key mapping stay unseen, and are what LoRA has to learn.

Training is bounded by steps (deterministic whatever else runs on the machine), checkpoints its
whole state every few minutes and resumes from it bit for bit.
"""

from __future__ import annotations

import dataclasses
import math
import random
import time
from pathlib import Path

from harness import archs
from harness.chat import build_answer, build_prompt
from harness.data.pages import ROW_PX, TOKEN_PX, fit_canvas
from harness.tinymodel.forge_pages import Page, make_task


@dataclasses.dataclass(frozen=True)
class ForgeConfig:
    steps: int = 4000  # 1-2 s a step on 2 CPU cores (pages of many rows cost more): ~80 min
    batch_lines: int = 36  # text lines per step (pages are batched by row count: no image padding)
    lr: float = 1e-3
    warmup_steps: int = 100
    decay_fraction: float = 0.3  # linear decay to 10% over the last 30% of the steps
    ctc_weight: float = 1.0
    random_pages: int = 6000  # pages of random characters added to the pool
    label_pages: int = 4000  # pages of random "Label: value" lines (for fill_json / ask)
    no_system_fraction: float = 0.2  # some prompts without a system turn: robust to swift's --system ''
    seed: int = 0
    clip: float = 1.0
    curriculum_steps: int = 1400  # the first steps: pages of 1-2 rows, `read` only
    curriculum_max_rows: int = 2
    # share of each task after the curriculum; reading stays the largest part
    task_weights: tuple = (("read", 0.45), ("read_json", 0.2), ("fill_json", 0.25), ("ask", 0.1))


# ---- the CTC reading head ---------------------------------------------------------------------
class CtcHead:
    """Linear(width -> vocab) on the vision features of the 16 px grid (the family's
    `reading_features`: the merger of either family), read row by row with CTC
    (blank = 0)."""

    def __init__(self, model, vocab_size: int, tokens_per_row: int):
        import torch

        module = model.get_submodule(archs.for_model(model).reading_features)
        self.tokens_per_row = tokens_per_row
        self.captured = None
        module.register_forward_hook(self._hook)
        width = _output_width(module, model)
        self.linear = torch.nn.Linear(width, vocab_size)

    def _hook(self, module, inputs, output):
        self.captured = output if not isinstance(output, tuple) else output[0]

    def loss(self, row_targets: list[list[int]], probe_only: bool = False):
        """CTC loss of the rows; `probe_only` trains the head alone (no gradient into the vision tower)."""
        import torch
        import torch.nn.functional as F

        # Qwen2-VL's merger returns one tensor; MiniCPM-V's a list, one tensor per image
        captured = torch.cat(self.captured) if isinstance(self.captured, list) else self.captured
        captured = captured.detach() if probe_only else captured
        feats = captured.reshape(len(row_targets), self.tokens_per_row, -1)
        log_probs = F.log_softmax(self.linear(feats), dim=-1).transpose(0, 1)  # (T, N, C)
        device = log_probs.device
        targets = torch.tensor([t for row in row_targets for t in row], dtype=torch.long, device=device)
        target_lengths = torch.tensor([len(row) for row in row_targets], dtype=torch.long, device=device)
        input_lengths = torch.full((len(row_targets),), self.tokens_per_row, dtype=torch.long, device=device)
        return F.ctc_loss(log_probs, targets, input_lengths, target_lengths, blank=0, zero_infinity=True)


def _output_width(module, model) -> int:
    """Feature width of the module the reading head listens to (a LayerNorm's, or the text model's)."""
    shape = getattr(module, "normalized_shape", None)
    return int(shape[0]) if shape else model.config.text_config.hidden_size


def encode_batch(processor, items, arch: archs.Arch = archs.DEFAULT, processor_kwargs: dict | None = None):
    """Tokenise (image, prompt, answer, system) items: labels only on the answer (+ <|im_end|> + newline).
    `processor_kwargs` go to the processor call (MiniCPM-V: the resolution that keeps a size unscaled)."""
    tok = processor.tokenizer
    texts, answers = [], []
    for _, prompt, answer, system in items:
        answers.append(build_answer(answer))
        texts.append(build_prompt(prompt, system=system, arch=arch) + answers[-1])
    enc = processor(text=texts, images=[img for img, *_ in items], padding=True, return_tensors="pt",
                    return_mm_token_type_ids=True, **(processor_kwargs or {}))
    labels = enc["input_ids"].clone()
    labels[enc["attention_mask"] == 0] = -100
    for i, answer in enumerate(answers):  # left padding: the answer is the last n tokens
        n = len(tok(answer, add_special_tokens=False).input_ids)
        labels[i, : labels.shape[1] - n] = -100
    enc["labels"] = labels
    return enc


def _rows(page: Page, image) -> list[str]:
    """The token rows of `image` (the page, padded or not): its lines, then empty rows to the bottom."""
    n_rows = image.size[1] // ROW_PX
    return list(page.lines) + [""] * (n_rows - len(page.lines))


# ---- the loop ---------------------------------------------------------------------------------
def lr_at(step: int, cfg: ForgeConfig) -> float:
    lr = cfg.lr * min(1.0, step / cfg.warmup_steps)
    frac = step / cfg.steps
    if frac > 1.0 - cfg.decay_fraction:
        lr *= 1.0 - 0.9 * (frac - (1.0 - cfg.decay_fraction)) / cfg.decay_fraction
    return lr


def pretrain(model, processor, pool, cfg: ForgeConfig, *, device: str = "cpu", on_step=None,
             on_eval=None, eval_every: int = 0, state_path: Path | None = None, resume: bool = False,
             checkpoint_every_s: float = 300.0, stop_after_s: float | None = None,
             state_extra: dict | None = None, ctc_probe_steps: int = 0,
             canvas: tuple[int, int] | None = None,
             curriculum_canvas: tuple[tuple[int, int], dict, int] | None = None) -> dict:
    """Train to `cfg.steps`; returns a summary with `"finished": False` when stopped early.

    `state_path`: where the whole training state (weights, CTC head, optimizer, RNGs, step, log) is
    saved every `checkpoint_every_s` seconds and when stopping early; `resume=True` continues from it.
    `on_eval(model, step)` runs every `eval_every` steps and at the end; its dicts form the curve.
    `ctc_probe_steps`: for a stage that continues a trained model with a fresh CTC head, the head
    trains alone for these first steps, so its random start sends no noise into the vision tower.
    `canvas`: the (width, height) every page of the pool is padded to, for a model that reads on one.
    `curriculum_canvas`: ((width, height), processor kwargs that keep that size unscaled, last step):
    up to that step the curriculum's pages are padded to this smaller canvas instead, so that a batch
    of 1-2-row pages holds as many text lines as without a canvas.
    """
    import torch

    torch.manual_seed(cfg.seed)
    rnd = random.Random(cfg.seed)
    tok = processor.tokenizer
    tok.padding_side = "left"
    arch = archs.for_model(model)
    first = pool[next(iter(pool))][0].image
    width_tokens = first.size[0] // TOKEN_PX
    ctc = CtcHead(model, len(tok), width_tokens)
    model.to(device)
    ctc.linear.to(device)
    params = list(model.parameters()) + list(ctc.linear.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.lr, betas=(0.9, 0.999), weight_decay=0.0)
    rows_choices = sorted(pool)
    weights = [len(pool[r]) * r for r in rows_choices]  # sample lines uniformly, not pages
    task_names = [t for t, _ in cfg.task_weights]
    task_p = [w for _, w in cfg.task_weights]
    step, history, curve, seconds_before = 0, [], [], 0.0
    if resume and state_path is not None and state_path.is_file():
        state = torch.load(state_path, map_location=device, weights_only=True)
        model.load_state_dict(state["model"])
        ctc.linear.load_state_dict(state["ctc"])
        opt.load_state_dict(state["optimizer"])
        rnd.setstate(state["python_rng"])
        torch.set_rng_state(state["torch_rng"])
        step, history, curve, seconds_before = state["step"], state["history"], state["curve"], state["seconds"]

    start = time.perf_counter()
    last_save = start

    def save_state():
        state_path.parent.mkdir(parents=True, exist_ok=True)  # the cache may not exist yet (a fresh clone)
        tmp = state_path.with_suffix(".tmp")
        torch.save({"model": model.state_dict(), "ctc": ctc.linear.state_dict(), "optimizer": opt.state_dict(),
                    "python_rng": rnd.getstate(), "torch_rng": torch.get_rng_state(), "step": step,
                    "history": history, "curve": curve,
                    "seconds": seconds_before + time.perf_counter() - start, **(state_extra or {})}, tmp)
        tmp.replace(state_path)

    def evaluate():
        model.eval()
        with torch.no_grad():
            point = on_eval(model, step)
        model.train()
        point.update(step=step, minutes=(seconds_before + time.perf_counter() - start) / 60)
        curve.append(point)

    model.train()
    while step < cfg.steps:
        if stop_after_s is not None and time.perf_counter() - start >= stop_after_s:
            if state_path is not None:
                save_state()
            model.eval()
            return {"finished": False, "steps": step, "seconds": seconds_before + time.perf_counter() - start}
        step += 1
        for g in opt.param_groups:
            g["lr"] = lr_at(step, cfg)
        in_curriculum = step <= cfg.curriculum_steps
        if in_curriculum:
            allowed = [r for r in rows_choices if r <= cfg.curriculum_max_rows] or rows_choices
            rows = rnd.choices(allowed, weights=[weights[rows_choices.index(r)] for r in allowed])[0]
        else:
            rows = rnd.choices(rows_choices, weights=weights)[0]
        if curriculum_canvas and step <= min(cfg.curriculum_steps, curriculum_canvas[2]):
            size, processor_kwargs = curriculum_canvas[:2]
        else:
            size, processor_kwargs = canvas, None
        # a batch holds batch_lines rows of image: on a canvas every page costs the canvas's rows
        page_rows = max(rows, size[1] // ROW_PX) if size else rows
        pages = rnd.sample(pool[rows], k=min(len(pool[rows]), max(1, cfg.batch_lines // page_rows)))
        images = [fit_canvas(page.image, size) for page in pages]
        items = []
        for page, image in zip(pages, images):
            task = "read" if in_curriculum else rnd.choices(task_names, weights=task_p)[0]
            prompt, answer = make_task(task, page, rnd)
            system = None if rnd.random() < cfg.no_system_fraction else arch.default_system
            items.append((image, prompt, answer, system))
        enc = encode_batch(processor, items, arch, processor_kwargs).to(device)
        out = model(**enc)
        # every token row of every image, rows below the text (a canvas's padding) read as empty
        row_targets = [tok(line, add_special_tokens=False).input_ids if i < len(p.lines) else []
                       for p, image in zip(pages, images) for i, line in enumerate(_rows(p, image))]
        ctc_loss = ctc.loss(row_targets, probe_only=step <= ctc_probe_steps)
        loss = out.loss + cfg.ctc_weight * ctc_loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.clip)
        opt.step()
        rec = {"step": step, "lm_loss": out.loss.item(), "ctc_loss": ctc_loss.item(), "lr": lr_at(step, cfg),
               "elapsed_s": seconds_before + time.perf_counter() - start}
        if step % 50 == 0 or step == cfg.steps:
            history.append(rec)
        if on_step:
            on_step(rec, cfg.steps)
        if on_eval and eval_every and step % eval_every == 0 and step < cfg.steps:
            evaluate()
        if state_path is not None and time.perf_counter() - last_save >= checkpoint_every_s:
            save_state()
            last_save = time.perf_counter()
    if on_eval:
        evaluate()
    model.eval()
    last = history[-1] if history else {"lm_loss": math.nan, "ctc_loss": math.nan}
    return {"finished": True, "steps": step, "seconds": seconds_before + time.perf_counter() - start,
            "final_lm_loss": last["lm_loss"], "final_ctc_loss": last["ctc_loss"], "curve": curve,
            "loss_every_50_steps": history}
