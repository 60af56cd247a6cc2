"""Whole-run planning: the data set's LM lengths as the training collator builds them, the estimate at the
longest sample against the one at train.max_length, and `lorabench plan --spec` printing both."""

from __future__ import annotations

import dataclasses
import json

import pytest

from harness import planner as P
from harness.cli import main
from harness.config.spec import make_spec
from harness.errors import UserError
from harness.planner import dataset_lengths as dl

MINI = {"dataset": "synthdocs-mini", "task": "extract", "train": {"max_length": 1024, "batch_size": 4}}


def _spec(model: str, **train):
    return make_spec({**MINI, "model": model, "train": {**MINI["train"], **train}})


@pytest.mark.parametrize("model, system_prompt", [("tiny", "default"), ("tiny", "none"),
                                                  ("tiny-minicpmv", "default")])
def test_lengths_are_the_collators(model, system_prompt, mini_dataset, tiny_model_dir, tiny_minicpmv_dir, tmp_path):
    """Tokenizer per sample + the processor's expansion per image size = what ChatCollator builds."""
    from transformers import AutoProcessor

    from adapters.chat_data import ChatCollator, read_jsonl, system_for
    from harness import archs
    from harness.chat import prompt_arch
    from harness.run.job import write_train_file

    model_dir = tiny_model_dir if model == "tiny" else tiny_minicpmv_dir
    spec = _spec(model, system_prompt=system_prompt, max_train_samples=6)
    lengths = dl.data_lengths(spec, model_dir, mini_dataset)
    assert len(lengths.samples) == 6
    from harness.data.pages import image_canvas
    from harness.data.samples import split_file

    rows = tmp_path / "train.jsonl"  # the job's own train file: canvas-padded images, the same prompts
    write_train_file(split_file(mini_dataset, "train", "extract"), rows, "extract", 6, image_canvas(model_dir))
    arch = prompt_arch(archs.for_dir(model_dir), spec.train.answer_prefix)
    collate = ChatCollator(AutoProcessor.from_pretrained(str(model_dir)), system_for(spec, arch), "answer", 4096, arch)
    for row, counted in zip(read_jsonl(rows), lengths.samples):
        enc = collate([row])
        ids = enc["input_ids"][0]
        pads = (ids == collate.image_pad_id).nonzero()
        assert row["id"] == counted.id
        assert (int(enc["attention_mask"][0].sum()), len(pads), int(pads[-1]) + 1) == \
            (counted.tokens, counted.image_tokens, counted.image_end)


def _inputs(spec, model_dir):
    shape = P.shape_from_hf_config(model_dir)
    return P.plan_input_from_spec(spec, shape, max_length=spec.train.max_length - 1, image_tokens=1)


def test_whole_run_peaks_at_the_longest_sample_and_cuts_at_max_length(mini_dataset, tiny_model_dir):
    spec = _spec("tiny")
    lengths = dl.data_lengths(spec, tiny_model_dir, mini_dataset)
    longest, shortest = lengths.longest, min(lengths.samples, key=lambda s: s.tokens)
    assert longest.tokens > shortest.tokens and longest.image_tokens > 0
    inputs = _inputs(spec, tiny_model_dir)
    run = dl.whole_run(inputs, lengths, 1024)
    assert (run.peak.inputs.lm_seq_len, run.peak.inputs.image_tokens_per_sample) == \
        (longest.tokens, longest.image_tokens)
    assert run.truncated == 0
    at_shortest = P.estimate(dataclasses.replace(inputs, max_length=shortest.text_tokens,
                                                 image_tokens=shortest.image_tokens))
    assert at_shortest.gpu_total_bytes < run.peak.gpu_total_bytes

    # a cap between the longest image's end and the longest sample: its answer is cut, the peak is the cap
    cap = longest.tokens - 5
    assert cap >= max(s.image_end for s in lengths.samples)
    capped = dl.whole_run(inputs, lengths, cap)
    assert capped.truncated >= 1 and capped.peak.inputs.lm_seq_len == cap
    assert capped.peak.gpu_total_bytes < run.peak.gpu_total_bytes

    # a cap inside an image: the collator refuses to cut image tokens, so the plan says the run would stop
    with pytest.raises(UserError, match="past train.max_length 100 .*the run would stop there"):
        dl.whole_run(inputs, lengths, 100)


def _write_spec(tmp_path, **train) -> str:
    import yaml

    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump({**MINI, "model": "tiny", "train": {**MINI["train"], **train}}))
    return str(path)


def test_cli_spec_prints_the_whole_run_next_to_max_length(tmp_path, mini_dataset, tiny_model_dir, capsys):
    from harness.commands.plan import _spec_model_dir

    spec = _write_spec(tmp_path)
    lengths = dl.data_lengths(_spec("tiny"), _spec_model_dir("tiny"), mini_dataset)
    longest = lengths.longest
    assert main(["plan", "--spec", spec]) == 0
    out = capsys.readouterr().out
    assert f"longest sample  {longest.id}: {longest.tokens} LM tokens = {longest.text_tokens} text + " \
           f"{longest.image_tokens} image" in out
    assert f"batch 4 x {longest.tokens} tokens ({longest.image_tokens} image), at sample {longest.id}" in out
    assert "at max_length" in out and "batch 4 x 1024 tokens" in out and "whole run: fits on 1 x 24 GiB" in out

    assert main(["plan", "--spec", spec, "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    run = doc["whole_run"]
    assert (run["samples"], run["longest"]["id"], run["peak"]["details"]["lm_seq_len"]) == \
        (len(lengths.samples), longest.id, longest.tokens)
    assert run["peak"]["gpu_gib"]["total"] < doc["gpu_gib"]["total"]  # every sample at the cap is the upper bound

    assert main(["plan", "--spec", spec, "--no-data"]) == 0
    assert "whole run" not in capsys.readouterr().out


def test_cli_data_and_image_tokens_conflict_in_one_line(tmp_path, mini_dataset, capsys):
    assert main(["plan", "--spec", _write_spec(tmp_path), "--data", "--image-tokens", "50"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--data reads the image tokens from the data set" in err


def test_cli_image_inside_max_length_is_one_line(tmp_path, mini_dataset, capsys):
    assert main(["plan", "--spec", _write_spec(tmp_path, max_length=100)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "the run would stop there" in err and "Traceback" not in err
