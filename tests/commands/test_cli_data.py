"""`lorabench data build | show | validate` through the real entry point."""

import json

import pytest
from PIL import Image

from harness.data import cards as data
from harness.cli import main


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "mini"
    assert main(["data", "build", "synthdocs-mini", "--out", str(out)]) == 0
    return out


def test_build_prints_counts_checksum_and_path(tmp_path, capsys):
    out = tmp_path / "mini"
    assert main(["data", "build", "synthdocs-mini", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    checksum = data.load_card("synthdocs-mini").checksum
    assert "pretrain 64, train 32, validation 8, test 16" in printed
    assert f"checksum: {checksum}" in printed and "matches the card" in printed
    assert f"path: {out.resolve()}" in printed and "built in" in printed
    assert main(["data", "build", "synthdocs-mini", "--out", str(out)]) == 0
    assert "reused existing build" in capsys.readouterr().out


def test_build_with_null_checksum_says_what_to_paste(tmp_path, capsys):
    card = tmp_path / "card.yaml"
    card.write_text("name: t\ngenerator: synthdocs\ngenerator_version: 1\nseed: 1\n"
                    "splits: {test: 2}\nchecksum: null\n")
    assert main(["data", "build", str(card)]) == 0
    printed = capsys.readouterr().out
    assert f"into {card}" in printed and (tmp_path / "build" / "test.extract.jsonl").is_file()


def test_show_prints_counts_and_writes_a_contact_sheet(built, tmp_path, capsys):
    sheet = tmp_path / "sheet.png"
    assert main(["data", "show", str(built), "--split", "validation", "--task", "transcribe",
                 "--n", "3", "--out", str(sheet)]) == 0
    printed = capsys.readouterr().out
    assert "validation.transcribe.jsonl" in printed and "pretrain.transcribe.jsonl" in printed
    assert f"contact sheet (3 samples): {sheet}" in printed
    with Image.open(sheet) as im:
        assert im.width > 600 and im.height > 3 * 48  # three pages of >= 3 rows of 16 px
        darkest, lightest = im.convert("L").getextrema()
        assert darkest < 100 < lightest  # ink on paper, not a blank sheet


def test_show_defaults_to_a_sheet_in_the_build_dir(built, capsys):
    assert main(["data", "show", str(built), "--n", "2"]) == 0
    assert (built / "contact_sheet.png").stat().st_size > 0
    # the sheet is not part of the dataset: the checksum is unchanged
    assert data.dataset_checksum(built) == data.load_card("synthdocs-mini").checksum


def test_validate_counts_good_rows(built, capsys):
    assert main(["data", "validate", str(built / "test.extract.jsonl")]) == 0
    assert "16 valid samples (extract 16)" in capsys.readouterr().out


@pytest.mark.parametrize("argv_tail, message", [
    (["validate", "{dir}/bad.jsonl"], "{dir}/bad.jsonl:2: malformed JSON"),
    (["validate", "{dir}/none.jsonl"], "none.jsonl does not exist"),
    (["build", "no-such-card"], "no dataset card named 'no-such-card'"),
    (["show", "{dir}", "--n", "0"], "--n must be at least 1"),
])
def test_user_errors_are_one_line_exit_2(built, tmp_path, capsys, argv_tail, message):
    good = (built / "test.transcribe.jsonl").read_text().splitlines()[0]
    row = json.loads(good)
    row["images"] = [str(built / row["images"][0])]  # absolute paths are fine too
    (tmp_path / "bad.jsonl").write_text(json.dumps(row) + "\n{not json\n")
    argv = ["data"] + [a.format(dir=tmp_path if a.endswith("jsonl") else built)
                       for a in argv_tail]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("lorabench: error: ") and err.count("\n") == 1
    assert message.format(dir=tmp_path) in err and "Traceback" not in err
