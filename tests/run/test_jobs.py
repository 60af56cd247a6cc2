"""Preparing a run: dataset and model resolution, the shared train file, user mistakes as one line."""

import json

import pytest

from harness.errors import UserError
from harness.data.samples import split_file
from harness.run.job import prepare_job, resolve_model_dir, write_train_file
from harness.config.spec import make_spec


def test_train_file_has_absolute_images_and_the_prompt(mini_dataset, tmp_path):
    n = write_train_file(mini_dataset / "train.extract.jsonl", tmp_path / "t.jsonl", "extract", 5)
    rows = [json.loads(line) for line in (tmp_path / "t.jsonl").read_text().splitlines()]
    assert n == len(rows) == 5
    for row in rows:
        assert row["images"][0].startswith("/") and row["messages"][0]["content"] == "<image>Extract fields as JSON."
        json.loads(row["messages"][1]["content"])  # the extract target is JSON


def test_users_own_directory_of_jsonl(mini_dataset, tmp_path):
    own = tmp_path / "own"
    own.mkdir()
    for split in ("train", "test"):
        lines = (mini_dataset / f"{split}.transcribe.jsonl").read_text().splitlines()[:3]
        rows = [json.loads(line) for line in lines]
        for r in rows:
            r["images"] = [str((mini_dataset / r["images"][0]).resolve())]
        (own / f"{split}.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    assert split_file(own, "train", "transcribe") == own / "train.jsonl"
    spec = make_spec({"dataset": str(own), "task": "transcribe", "model": str(tmp_path)})
    (tmp_path / "config.json").write_text("{}")
    job = prepare_job(spec, tmp_path / "run")
    assert job.n_train == 3 and job.eval_jsonl.name == "test.jsonl"


def test_missing_split_and_model_are_one_line_errors(tmp_path):
    with pytest.raises(UserError, match=r"has no test\.extract\.jsonl"):
        split_file(tmp_path, "test", "extract")
    with pytest.raises(UserError, match="not an embedded model .tiny, tiny-minicpmv. and not a checkpoint directory"):
        resolve_model_dir(str(tmp_path / "nope"))


def test_corrupt_image_in_user_data_names_file_and_line(mini_dataset, tmp_path):
    rows = [json.loads(line) for line in (mini_dataset / "train.extract.jsonl").read_text().splitlines()[:2]]
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    rows[0]["images"] = [str((mini_dataset / rows[0]["images"][0]).resolve())]
    rows[1]["images"] = [str(bad)]
    path = tmp_path / "train.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    with pytest.raises(UserError, match=r"train\.jsonl:2"):
        write_train_file(path, tmp_path / "out.jsonl", "extract", None)
