"""The JSONL loader's other input forms and refusals, and `lorabench data validate` listing every bad row."""

import json
import re

import pytest
from PIL import Image

from harness.cli import main
from harness.data.samples import check_samples, load_samples
from harness.errors import UserError


@pytest.fixture
def user_dir(tmp_path):
    Image.new("RGB", (64, 32), "white").save(tmp_path / "a.png")
    return tmp_path


def _write(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def _row(messages, doc_id="r1", **extra):
    return {"id": doc_id, "messages": messages, "images": ["a.png"], **extra}


USER = {"role": "user", "content": "<image>Read all text."}
ANSWER = {"role": "assistant", "content": "hello"}


def test_structured_content_becomes_the_image_placeholder_and_text(user_dir):
    structured = _row([
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Read all text."}]},
        {"role": "assistant", "content": [{"type": "text", "text": "hello"}]},
    ])
    path = _write(user_dir / "s.jsonl", [structured, _row([USER, ANSWER], doc_id="r2")])
    from_list, from_string = load_samples(path)
    assert (from_list.prompt, from_list.target) == (from_string.prompt, from_string.target) == \
        ("Read all text.", "hello")
    assert from_list.image == (user_dir / "a.png").resolve()


def test_structured_content_may_name_its_image_inline(user_dir):
    row = {"id": "r1", "messages": [
        {"role": "user", "content": [{"type": "image", "image": "a.png"}, {"type": "text", "text": "Read."}]},
        ANSWER]}
    (sample,) = load_samples(_write(user_dir / "s.jsonl", [row]))
    assert sample.image == (user_dir / "a.png").resolve() and sample.prompt == "Read."


@pytest.mark.parametrize("messages, message", [
    ([{"role": "system", "content": "Be terse."}, USER, ANSWER],
     "a system turn is not supported: the system prompt is the run setting train.system_prompt"),
    ([USER, ANSWER, {"role": "user", "content": "And the total?"}, {"role": "assistant", "content": "9"}],
     "2 assistant turns: only single-turn rows (a user turn and one assistant answer) are supported"),
    ([USER, ANSWER, {"role": "user", "content": "More?"}], "the assistant answer must be the last turn"),
    ([USER, {"role": "tool", "content": "x"}, ANSWER], "unknown role 'tool'"),
    ([{"role": "user", "content": [{"type": "video"}]}, ANSWER], "unsupported content item in a user turn"),
    ([USER, {"role": "assistant", "content": [{"type": "image"}]}], "only the user turn may hold the image"),
    ([{"role": "user", "content": [{"type": "text"}]}, ANSWER], "a text item of a user turn needs a string 'text'"),
    ([{"role": "user", "content": 5}, ANSWER], "'content' must be a string or a list"),
])
def test_refused_rows_name_file_and_line(user_dir, messages, message):
    path = _write(user_dir / "s.jsonl", [_row([USER, ANSWER], doc_id="ok"), _row(messages)])
    with pytest.raises(UserError, match=re.escape(message)) as err:
        load_samples(path)
    assert str(err.value).startswith(f"{path}:2: ")
    assert "\n" not in str(err.value)


def test_loader_names_the_first_bad_row_and_counts_the_rest(user_dir):
    path = _write(user_dir / "s.jsonl", [_row([USER, ANSWER], doc_id="a"), "{not json",
                                         _row([USER], doc_id="b"), _row([USER, ANSWER], doc_id="a")])
    with pytest.raises(UserError) as err:
        load_samples(path)
    assert str(err.value).startswith(f"{path}:2: malformed JSON")
    assert "(and 2 more bad rows: `lorabench data validate" in str(err.value)


def test_check_samples_reports_every_bad_row(user_dir):
    path = _write(user_dir / "s.jsonl", [_row([USER, ANSWER], doc_id="a"), "{not json", "",
                                         _row([USER], doc_id="b"), _row([USER, ANSWER], doc_id="a"),
                                         _row([USER, ANSWER], doc_id="c")])
    samples, problems, n_rows = check_samples(path)
    assert [s.id for s in samples] == ["a", "c"] and n_rows == 5
    assert [p.split(": ", 1)[0] for p in problems] == [f"{path}:2", f"{path}:4", f"{path}:5"]
    assert "missing target" in problems[1] and "duplicate id 'a' (first on line 1)" in problems[2]


def test_validate_lists_every_bad_row_then_the_count_and_exits_2(user_dir, capsys):
    path = _write(user_dir / "s.jsonl", [_row([USER, ANSWER], doc_id="a"), "{not json",
                                         _row([{"role": "system", "content": "x"}, USER, ANSWER], doc_id="b"),
                                         _row([USER, ANSWER], doc_id="c")])
    assert main(["data", "validate", str(path)]) == 2
    out, err = capsys.readouterr()
    lines = err.splitlines()
    assert len(lines) == 2 and "Traceback" not in err
    assert lines[0].startswith(f"lorabench: error: {path}:2: malformed JSON")
    assert lines[1].startswith(f"lorabench: error: {path}:3: a system turn is not supported")
    assert out.strip() == f"{path}: 2 of 4 rows are bad (listed above); 2 valid samples (transcribe 2)"


def test_validate_of_a_good_file_exits_0(user_dir, capsys):
    path = _write(user_dir / "s.jsonl", [_row([USER, ANSWER])])
    assert main(["data", "validate", str(path)]) == 0
    assert capsys.readouterr().out.strip() == f"{path}: 1 valid samples (transcribe 1)"


def test_train_file_keeps_the_single_turn_form(user_dir):
    from harness.run.job import write_train_file

    structured = _row([
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Read all text."}]},
        {"role": "assistant", "content": [{"type": "text", "text": "hello"}]}])
    dest = user_dir / "train.jsonl"
    assert write_train_file(_write(user_dir / "s.jsonl", [structured]), dest, "transcribe", None) == 1
    (row,) = [json.loads(line) for line in dest.read_text().splitlines()]
    assert row["messages"] == [{"role": "user", "content": "<image>Read all text."},
                               {"role": "assistant", "content": "hello"}]
    assert row["images"] == [str((user_dir / "a.png").resolve())]
