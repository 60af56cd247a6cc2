"""Synthetic documents (docgen), dataset cards, deterministic builds and the JSONL loader (data)."""

import json
import re
import shutil
import string

import numpy as np
import pytest
from PIL import Image

from harness.data import cards as data, check_digits, docgen
from harness.data.samples import PROMPTS, load_samples, split_file
from harness.errors import UserError
from harness.data.pages import MAX_LINE_CHARS

MINI = "synthdocs-mini"


@pytest.fixture(scope="module")
def mini_build(tmp_path_factory):
    return data.build_dataset(data.load_card(MINI), tmp_path_factory.mktemp("mini") / "build")


# ---- check digits (expected values from published examples) -------------------------------------
def test_luhn_check_digit_matches_the_textbook_example():
    assert check_digits.luhn_check_digit("7992739871") == "3"  # 79927398713
    assert check_digits.luhn_valid("79927398713")
    assert not check_digits.luhn_valid("79927398712")
    assert not check_digits.luhn_valid("79927398731")  # adjacent swap caught


def test_iso7064_mod11_2_matches_orcid_examples():
    assert check_digits.iso7064_mod11_2_check("000000021825009") == "7"  # 0000-0002-1825-0097
    assert check_digits.iso7064_mod11_2_check("000000015109370") == "0"  # 0000-0001-5109-3700
    assert check_digits.iso7064_mod11_2_check("000000021694233") == "X"  # 0000-0002-1694-233X
    assert check_digits.iso7064_mod11_2_valid("0000000216942331") is False


def test_s10_check_digit_matches_upu_examples():
    assert check_digits.s10_check_digit("47312482") == "9"  # AA473124829GB
    assert check_digits.s10_check_digit("12345678") == "5"  # 8+12+12+8+15+30+63+56=204; 11-204%11=5
    assert check_digits.s10_valid("AA473124829GB")
    assert not check_digits.s10_valid("AA473124828GB")


# ---- document content ----------------------------------------------------------------------------
ID_CHECKS = {"invoice_no": lambda v: check_digits.luhn_valid(v.removeprefix("INV-")),
             "document_no": check_digits.iso7064_mod11_2_valid,
             "tracking_no": check_digits.s10_valid,
             "member_id": check_digits.luhn_valid}


@pytest.mark.parametrize("kind", docgen.KINDS)
def test_documents_fit_the_model_and_fields_are_verbatim(kind):
    rng = np.random.default_rng(123)
    allowed = set(string.printable) - set("\t\r\n\x0b\x0c")
    checked_ids = 0
    for _ in range(300):
        doc = docgen.generate_document(kind, rng)
        assert doc.kind == kind
        assert 3 <= len(doc.lines) <= 8
        for line in doc.lines:
            assert 0 < len(line) <= MAX_LINE_CHARS == 32
            assert set(line) <= allowed
            assert docgen.ctc_frames(line) <= 40
        assert 3 <= len(doc.fields) <= 5
        for name, value in doc.fields.items():
            assert isinstance(value, str) and value in doc.text, (name, value)
            if name in ID_CHECKS:
                assert ID_CHECKS[name](value), (name, value)
                checked_ids += 1
        assert json.loads(doc.fields_json) == doc.fields
        assert doc.text == "\n".join(doc.lines)
    if kind != "receipt":  # every other kind carries an identifier with a check digit
        assert checked_ids >= 300


def test_dates_come_in_all_four_formats():
    patterns = {"iso": r"^\d{4}-\d\d-\d\d$", "dmy_slash": r"^\d\d/\d\d/\d{4}$",
                "mon_d_y": r"^[A-Z][a-z]{2} \d{1,2} \d{4}$", "dmy_dot_short": r"^\d\d\.\d\d\.\d\d$"}
    seen = set()
    rng = np.random.default_rng(0)
    for _ in range(200):
        date = docgen.generate_document("invoice", rng).fields["date"]
        matched = [name for name, pat in patterns.items() if re.match(pat, date)]
        assert len(matched) == 1, date
        seen.update(matched)
    assert seen == set(patterns)


def test_format_helpers_by_hand():
    import datetime as dt

    day = dt.date(2024, 3, 15)
    assert [docgen.format_date(day, f) for f in docgen.DATE_FORMATS] == [
        "2024-03-15", "15/03/2024", "Mar 15 2024", "15.03.24"]
    assert docgen.format_number(123450, "EUR") == "1,234.50"
    assert docgen.format_number(1200, "JPY") == "1,200"


def test_generation_is_deterministic():
    a = [docgen.generate_document(k, np.random.default_rng(5)) for k in docgen.KINDS]
    b = [docgen.generate_document(k, np.random.default_rng(5)) for k in docgen.KINDS]
    assert a == b


# ---- cards ---------------------------------------------------------------------------------------
def _write_card(tmp_path, **changes):
    raw = (data.DATASETS_DIR / MINI / "card.yaml").read_text()
    import yaml

    card = yaml.safe_load(raw)
    card.update(changes)
    card = {k: v for k, v in card.items() if v is not ...}
    path = tmp_path / "card.yaml"
    path.write_text(yaml.safe_dump(card))
    return path


def test_committed_cards_load_and_have_checksums():
    full = data.load_card("synthdocs")
    assert full.splits == {"pretrain": 6000, "train": 1000, "validation": 100, "test": 200}
    assert full.style == "easy" and set(full.kinds) == set(docgen.KINDS)
    mini = data.load_card(MINI)
    assert mini.splits == {"pretrain": 64, "train": 32, "validation": 8, "test": 16}
    for card in (full, mini):
        assert card.checksum and len(card.checksum) == 64
        assert card.path.read_text().startswith("# Build: lorabench data build")


@pytest.mark.parametrize("changes, message", [
    ({"colour": "red"}, "unknown card key 'colour'"),
    ({"splits": {"trian": 3}}, "unknown split 'trian'"),
    ({"kinds": ["receipt", "menu"]}, "unknown kind 'menu'"),
    ({"style": "fancy"}, "style 'fancy' is not a preset"),
    ({"style": {"noise": 3, "font_colour": "red"}}, "unknown style key 'font_colour'"),
    ({"style": {"width_px": 650}}, "bad style"),
    ({"seed": ...}, "missing card key 'seed'"),
    ({"generator_version": 99}, "generator_version 99"),
    ({"checksum": "abc"}, "checksum must be null or 64"),
])
def test_card_errors_name_the_file_and_key(tmp_path, changes, message):
    path = _write_card(tmp_path, **changes)
    with pytest.raises(UserError, match=re.escape(message)) as err:
        data.load_card(path)
    assert str(path) in str(err.value)


def test_unknown_card_name_lists_the_known_ones():
    with pytest.raises(UserError, match="synthdocs-mini"):
        data.load_card("no-such-card")


def test_style_overrides_apply_on_top_of_easy(tmp_path):
    card = data.load_card(_write_card(tmp_path, style={"noise": 5.0}))
    assert card.render_style.noise == 5.0 and card.render_style.font == "mono"


# ---- build ---------------------------------------------------------------------------------------
def _all_bytes(root):
    return {p.relative_to(root).as_posix(): p.read_bytes()
            for p in sorted(root.rglob("*")) if p.is_file() and p.name != data.BUILD_FILE}


def test_build_is_byte_identical_and_matches_the_card(mini_build, tmp_path):
    card = data.load_card(MINI)
    again = data.build_dataset(card, tmp_path / "again")
    assert again.checksum == mini_build.checksum == card.checksum
    assert _all_bytes(again.path) == _all_bytes(mini_build.path)
    assert mini_build.counts == {"pretrain": 64, "train": 32, "validation": 8, "test": 16}
    names = sorted(p.name for p in mini_build.path.glob("*.jsonl"))
    assert "pretrain.extract.jsonl" not in names and len(names) == 7
    assert len(list((mini_build.path / "images" / "train").glob("*.png"))) == 32
    build_json = json.loads((mini_build.path / data.BUILD_FILE).read_text())
    assert build_json["checksum"] == card.checksum and build_json["generator_version"] == 1
    assert not list(tmp_path.glob(".*tmp*"))  # no temp dir left behind


def test_second_build_is_reused_unless_forced(mini_build):
    card = data.load_card(MINI)
    reused = data.build_dataset(card, mini_build.path)
    assert reused.reused and reused.checksum == mini_build.checksum
    assert reused.counts == mini_build.counts
    forced = data.build_dataset(card, mini_build.path, force=True)
    assert not forced.reused and forced.checksum == mini_build.checksum


def test_checksum_mismatch_fails_and_keeps_old_output(tmp_path):
    path = _write_card(tmp_path, checksum="0" * 64, splits={"test": 2})
    out = tmp_path / "out"
    with pytest.raises(UserError, match="expects 0000.*Pillow.*FreeType.*checksum: null"):
        data.build_dataset(data.load_card(path), out)
    assert not out.exists() and not list(tmp_path.glob(".out.*"))


def test_null_checksum_builds_and_refuses_foreign_directory(tmp_path):
    card = data.load_card(_write_card(tmp_path, checksum=None, splits={"test": 2}))
    foreign = tmp_path / "home"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("precious")
    with pytest.raises(UserError, match="refusing to replace"):
        data.build_dataset(card, foreign)
    assert (foreign / "notes.txt").read_text() == "precious"
    info = data.build_dataset(card, tmp_path / "out")
    assert len(info.checksum) == 64 and info.counts == {"test": 2}


def test_documents_do_not_depend_on_split_sizes(tmp_path):
    small = data.load_card(_write_card(tmp_path, splits={"test": 3}, checksum=None))
    big = data.load_card(_write_card(tmp_path, splits={"train": 5, "test": 6}, checksum=None))
    for i in range(3):
        doc_small, rng_small = data.make_document(small, "test", i)
        doc_big, rng_big = data.make_document(big, "test", i)
        assert doc_small == doc_big
        assert rng_small.integers(1 << 30) == rng_big.integers(1 << 30)
    assert data.make_document(small, "test", 0)[0] != data.make_document(small, "train", 0)[0]


def test_rows_use_the_common_format(mini_build):
    rows = [json.loads(line) for line in
            split_file(mini_build.path, "train", "extract").read_text().splitlines()]
    row = rows[5]
    assert row["id"] == "train-000005" and row["task"] == "extract"
    assert row["images"] == ["images/train/train-000005.png"]
    assert row["messages"][0] == {"role": "user", "content": "<image>Extract fields as JSON."}
    target = row["messages"][1]["content"]
    assert json.loads(target) == row["fields"]
    assert target == json.dumps(json.loads(target), separators=(",", ":"))


# ---- loader --------------------------------------------------------------------------------------
def test_load_samples_of_a_build(mini_build):
    samples = load_samples(split_file(mini_build.path, "test", "transcribe"))
    assert len(samples) == 16
    s = samples[0]
    assert s.id == "test-000000" and s.task == "transcribe"
    assert s.prompt == PROMPTS["transcribe"]
    assert s.image.is_absolute() and s.image.is_file()
    assert s.target == s.text and s.kind in docgen.KINDS
    assert Image.open(s.image).height == 16 * len(s.text.splitlines())


def test_split_file_rejects_pretrain_extract(tmp_path):
    with pytest.raises(UserError, match="only has task"):
        split_file(tmp_path, "pretrain", "extract")


@pytest.fixture
def user_dir(tmp_path):
    Image.new("RGB", (64, 32), "white").save(tmp_path / "a.png")
    (tmp_path / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    return tmp_path


def _row(doc_id="r1", prompt="<image>Read all text.", target="hello", images=("a.png",), **extra):
    messages = [{"role": "user", "content": prompt}]
    if target is not None:
        messages.append({"role": "assistant", "content": target})
    return json.dumps({"id": doc_id, "messages": messages, "images": list(images), **extra})


def test_user_rows_without_text_or_fields_get_defaults(user_dir):
    path = user_dir / "mine.jsonl"
    path.write_text("\n".join([_row("a"), _row("b", "<image>Fields?", '{"total":"9.50"}'), ""]))
    transcribe, extract = load_samples(path)
    assert (transcribe.task, transcribe.text, transcribe.fields) == ("transcribe", "hello", None)
    assert (extract.task, extract.fields, extract.text) == ("extract", {"total": "9.50"}, None)
    assert extract.prompt == "Fields?" and extract.image == (user_dir / "a.png").resolve()
    # `task` is the task of rows that do not say; rows that do say are filtered by it
    assert [s.task for s in load_samples(path, task="extract")] == ["extract", "extract"]
    path.write_text("\n".join([_row("a", task="transcribe"), _row("b", task="extract")]))
    assert [s.id for s in load_samples(path, task="extract")] == ["b"]


@pytest.mark.parametrize("bad_line, message", [
    ('{"id": "x", "messages": [', "malformed JSON"),
    (_row(images=("missing.png",)), "image missing.png not found"),
    (_row(images=("corrupt.png",)), "unreadable image corrupt.png"),
    (_row(target=None), "missing target"),
    (_row(target="  "), "missing target"),
    (_row(prompt="Read all text."), "no <image> placeholder"),
    (_row(prompt="<image>Read."), None),  # control: a good row
    (_row(prompt="<image><image>Compare.", images=("a.png", "a.png")), "only one image"),
    (_row(prompt="<image><image>Read.", images=("a.png",)), "2 <image> placeholder(s) but 1"),
    (_row(doc_id="r0"), "duplicate id 'r0' (first on line 1)"),
])
def test_loader_errors_name_file_and_line(user_dir, bad_line, message):
    path = user_dir / "mine.jsonl"
    path.write_text(_row(doc_id="r0") + "\n" + bad_line + "\n")
    if message is None:
        assert len(load_samples(path)) == 2
        return
    with pytest.raises(UserError, match=re.escape(message)) as err:
        load_samples(path)
    assert str(err.value).startswith(f"{path}:2: ")


def test_missing_file_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_samples(tmp_path / "nope.jsonl")


def test_ensure_built_uses_the_card_dir(tmp_path):
    card_dir = tmp_path / "tiny"
    card_dir.mkdir()
    shutil.move(_write_card(tmp_path, splits={"validation": 2}, checksum=None), card_dir)
    path = data.ensure_built(card_dir / "card.yaml")
    assert path == (card_dir / "build").resolve()
    assert data.ensure_built(card_dir) == path  # a card directory works too, and is reused
