"""The LM lengths a run's training data gives, for `lorabench plan --spec` in whole-run mode.

A run's peak is set by its longest batch, not by its first steps: the collator pads a batch to its
longest sample, so the whole run peaks at micro batch x the longest sample (capped at
train.max_length by right truncation) and at the largest image a sample carries. Planning every
sample at train.max_length bounds that from above; this module reads what the data set holds.

Lengths are counted the way the training collator (adapters.chat_data.ChatCollator) builds a row:
the chat prompt of the model family with the spec's system prompt and answer prefix, the answer and
its end marker, and the image expanded by the model's own processor. Only the tokenizer runs per
sample; the processor's image expansion is computed once per distinct image size and added, which
gives the collator's count exactly because the processor only replaces the image block's placeholder
by a run of tokens that depends on the image size alone. Images are opened for their header only.
Everything is read from local files (HF_HUB_OFFLINE).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from harness.errors import UserError
from harness.planner.memory import Plan, PlanInput, estimate
from harness.run_spec import Spec


@dataclasses.dataclass(frozen=True)
class SampleLength:
    """One training sample's LM sequence before the train.max_length cap."""

    id: str
    tokens: int  # text + image tokens, as the collator builds the row
    image_tokens: int  # the processor's placeholder tokens (one per vision token)
    image_size: tuple[int, int]  # width x height as the processor sees it (on the model's canvas)
    image_end: int  # LM position just past the last image token: a train.max_length below it fails the run

    @property
    def text_tokens(self) -> int:
        return self.tokens - self.image_tokens


@dataclasses.dataclass(frozen=True)
class DataLengths:
    source: Path  # the JSONL file the run trains on
    samples: tuple[SampleLength, ...]  # the ones the run uses (train.max_train_samples first rows)

    @property
    def longest(self) -> SampleLength:
        return max(self.samples, key=lambda s: (s.tokens, s.image_tokens))

    @property
    def largest_image(self) -> SampleLength:
        return max(self.samples, key=lambda s: (s.image_tokens, s.tokens))


def dataset_ready(spec: Spec) -> Path | None:
    """The spec's data set directory when reading it builds nothing (a directory of JSONL files, or a
    card whose build exists), else None: planning should not render a data set as a side effect."""
    path = Path(spec.dataset)
    if path.is_dir() and not (path / "card.yaml").exists():
        return path
    from harness.data.cards import BUILD_FILE, load_card

    try:
        build = load_card(spec.dataset).default_build_dir
    except UserError:
        return None
    return build if (build / BUILD_FILE).is_file() else None


def _image_expansion(processor, arch, image) -> tuple[int, int, int]:
    """(extra tokens, placeholder tokens, end of the last placeholder) of the processor's expansion
    of the image block's text for `image`."""
    tok = processor.tokenizer
    block = len(tok(arch.image_block).input_ids)  # special tokens as the sample's own count has them
    ids = processor(text=[arch.image_block], images=[image], return_tensors="pt")["input_ids"][0]
    where = (ids == tok.convert_tokens_to_ids(arch.image_token)).nonzero()
    return len(ids) - block, len(where), int(where[-1]) + 1 if len(where) else 0


def data_lengths(spec: Spec, model_dir: Path, dataset_dir: Path | None = None) -> DataLengths:
    """Every training sample's LM length for `spec` with the model in `model_dir` (its tokenizer and
    processor). `dataset_dir` defaults to the spec's (built when it is a card without a build)."""
    from PIL import Image

    from adapters.chat_data import system_for
    from harness import archs
    from harness.chat import IMAGE_PLACEHOLDER, build_answer, build_prompt, prompt_arch
    from harness.data.cards import resolve_dataset_dir
    from harness.data.pages import fit_canvas, image_canvas
    from harness.data.samples import PROMPTS, load_samples, split_file

    source = split_file(dataset_dir or resolve_dataset_dir(spec.dataset), "train", spec.task)
    samples = load_samples(source, task=spec.task)[: spec.train.max_train_samples or None]
    arch = prompt_arch(archs.for_dir(model_dir), spec.train.answer_prefix)
    system = system_for(spec, arch)
    canvas = image_canvas(model_dir)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a local checkpoint: never reach for the Hub
    from transformers import AutoProcessor

    try:
        processor = AutoProcessor.from_pretrained(str(model_dir), local_files_only=True)
    except (OSError, ValueError) as exc:
        raise UserError(f"{model_dir}: cannot load its processor to count the data set's tokens ({exc})") from None
    tok = processor.tokenizer
    # our rows put the image first in the user turn: the tokens before it are the same in every row
    head = len(tok(build_prompt(IMAGE_PLACEHOLDER, system=system, arch=arch).split(arch.image_block)[0]).input_ids)
    expansion: dict[tuple[int, int], tuple[int, int, int]] = {}
    out = []
    for s in samples:
        with Image.open(s.image) as im:
            size = im.size
            if canvas is not None and size != tuple(canvas):  # the run pads each page onto the canvas
                try:
                    size = fit_canvas(im, canvas).size
                except ValueError as exc:
                    raise UserError(f"{s.image}: {exc}") from None
            if size not in expansion:
                expansion[size] = _image_expansion(processor, arch, fit_canvas(im.convert("RGB"), canvas))
        # the same row text as the job's train file and the collator: the image first, then the prompt
        text = build_prompt(IMAGE_PLACEHOLDER + (s.prompt or PROMPTS.get(spec.task, "")), system=system,
                            arch=arch) + build_answer(s.target)
        extra, image_tokens, image_end = expansion[size]
        out.append(SampleLength(s.id, len(tok(text).input_ids) + extra, image_tokens, size, head + image_end))
    return DataLengths(source, tuple(out))


@dataclasses.dataclass(frozen=True)
class WholeRun:
    """The largest estimate over the samples a run trains on (each batch at its longest sample)."""

    lengths: DataLengths
    max_length: int  # train.max_length: the collator cuts longer rows there (right truncation)
    peak: Plan
    at: SampleLength  # the sample whose length gives the peak

    @property
    def truncated(self) -> int:
        return sum(s.tokens > self.max_length for s in self.lengths.samples)


def whole_run(inputs: PlanInput, lengths: DataLengths, max_length: int) -> WholeRun:
    """`inputs` re-planned at every distinct (length, image tokens) the samples give, lengths cut to
    `max_length` as the collator does; the largest estimate. UserError for a sample whose image does
    not fit `max_length`: the collator refuses to cut image tokens, so the run would stop there."""
    cut = [s for s in lengths.samples if s.image_end > max_length]
    if cut:
        s = max(cut, key=lambda s: s.image_end)
        raise UserError(f"{lengths.source}: sample {s.id}'s image ends at LM token {s.image_end}, past "
                        f"train.max_length {max_length} ({len(cut)} such samples): the run would stop there; "
                        "raise train.max_length or shrink the images")
    best: tuple[float, Plan, SampleLength] | None = None
    seen: set[tuple[int, int]] = set()
    for s in lengths.samples:
        key = (min(s.tokens, max_length), s.image_tokens)
        if key in seen:
            continue
        seen.add(key)
        plan = estimate(dataclasses.replace(inputs, max_length=key[0] - key[1], image_tokens=key[1]))
        if best is None or plan.gpu_total_bytes > best[0]:
            best = (plan.gpu_total_bytes, plan, s)
    assert best is not None  # load_samples refuses an empty split
    return WholeRun(lengths, max_length, best[1], best[2])
