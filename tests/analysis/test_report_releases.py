"""The report's "What changed between releases" section, built from fixture records."""

from __future__ import annotations

import copy

from tests import fixtures_records as fx

from harness.analysis.report import build_report, render_markdown
from harness.analysis.report.releases import environments, loss_departure, release_tables

SEEN_021 = {"torch": "2.14.1", "transformers": "5.19.0", "peft": "0.21.2", "ms-swift": "4.6.0"}


def _roundtrip(ok=True, saved="0.21.2", cause=None):
    loaded_by = {"peft": "0.20.0", "transformers": "5.19.0", "ms-swift": "4.6.0", "torch": "2.14.1"}
    block = {"ok": ok, "releases": {"saved_by_peft": saved, "loaded_by": loaded_by}}
    return {"ok": ok, "cause": cause, "saved_by_peft": saved, "loaders": {"peft": block, "swift": dict(block)}}


def _pair(alignment="aligned", **change):
    """The pinned run of one cell and the same run under peft-0.21 (same losses and settings unless changed)."""
    pinned, _ = fx.make_record("peft", alignment, 0, extra_cell={"env": None})
    pinned["roundtrip"] = _roundtrip(saved="0.20.0")
    other = copy.deepcopy(pinned)
    other["run_id"] += "-peft021"
    other["cell"]["env"] = "peft-0.21"
    other["env"]["environment"] = {"name": "peft-0.21", "lock_sha256": "8b3a" * 16, "packages": dict(SEEN_021)}
    other["roundtrip"] = _roundtrip()
    for step, loss in change.get("losses", {}).items():
        other["train"]["steps"][step - 1]["loss"] = loss
    other["effective_settings"].update(change.get("settings", {}))
    if "roundtrip" in change:
        other["roundtrip"] = change["roundtrip"]
    return pinned, other


def _summary(records):
    return next(t for t in build_report(records).tables if t.key == "releases")


def test_no_section_when_every_run_trained_in_one_environment():
    records = [fx.make_record("peft", "aligned", s)[0] for s in (0, 1)]
    assert environments(records) == ["main"]
    assert release_tables(records, 3) == []
    assert "releases" not in {t.key for t in build_report(records).tables}


def test_an_identical_run_under_another_release_agrees_and_names_the_release():
    table = _summary(list(_pair()))
    assert table.title.endswith("What changed between releases")
    (row,) = table.rows
    text = [c.text for c in row]
    assert text[:4] == ["peft · aligned", "peft-0.21", "peft 0.20.0 → 0.21.2", "1/1"]
    assert text[4] == "0.0000" and text[5] == "—"  # max |Δloss|, no departure
    assert text[6] == "1.000× same" and text[9] == "1.000× same"  # field F1 and samples/s ratios
    assert text[10] == "1/1 · peft 0.21.2 → 0.20.0"  # saved by the set's peft, loaded by the pinned one
    assert "No setting differs" in table.caption
    assert len(table.row_runs[0]) == 2


def test_where_the_loss_departs_is_said():
    pinned, other = _pair(losses={5: 9.0, 7: 9.0})
    worst, first = loss_departure([pinned], [other])
    assert first == 5 and worst > 1
    row = _summary([pinned, other]).rows[0]
    assert row[5].text == "5" and row[5].bold


def test_a_moved_default_shows_in_the_settings_table():
    pinned, other = _pair(alignment="native", settings={"lora.alpha": 16, "kasa": True})
    tables = release_tables([pinned, other], 4)
    assert [t.title.split(".")[0] for t in tables] == ["Table 4a", "Table 4b"]
    rows = [[c.text for c in row] for row in tables[1].rows]
    assert ["peft · native", "peft-0.21", "read back", "kasa", "—", "True"] in rows
    assert any(r[3] == "lora.alpha" and r[5] == "16" for r in rows)


def test_the_frameworks_resolved_arguments_that_differ_are_listed_without_the_runs_directories(tmp_path):
    import json

    pinned, other = _pair(alignment="native")
    for record, args in ((pinned, {"learning_rate": 5e-05, "warmup_ratio": 0.0, "output_dir": "/r/work/a"}),
                         (other, {"learning_rate": 5e-05, "warmup_steps": 0.0, "output_dir": "/r/work/b"})):
        work = tmp_path / "work" / record["run_id"]
        work.mkdir(parents=True)
        (tmp_path / "runs").mkdir(exist_ok=True)
        (work / "training_args.json").write_text(json.dumps(args))
        record["train"]["framework_args"] = f"../work/{record['run_id']}/training_args.json"
        record["_source"] = str(tmp_path / "runs" / f"{record['run_id']}.json")
    rows = [[c.text for c in row] for row in release_tables([pinned, other], 2)[1].rows]
    assert rows == [["peft · native", "peft-0.21", "training_args.json", "warmup_ratio", "0.0", "—"],
                    ["peft · native", "peft-0.21", "training_args.json", "warmup_steps", "—", "0.0"]]


def test_a_failed_cross_release_round_trip_is_bold_and_its_cause_named():
    cause = "peft loader: saved tensors it did not load: base_model.model.model.layers.0.mlp.up_proj.lora_A.weight"
    pinned, other = _pair(roundtrip=_roundtrip(ok=False, cause=cause))
    table = _summary([pinned, other])
    assert table.rows[0][10].text.startswith("0/1") and table.rows[0][10].bold
    assert f"peft · aligned under peft-0.21: {cause}" in table.caption


def test_a_set_with_no_pinned_cell_is_said_and_the_markdown_has_the_section():
    pinned, other = _pair()
    lone, _ = fx.make_record("swift", "aligned", 0, extra_cell={"env": "peft-0.14"})
    lone["env"]["environment"] = {"name": "peft-0.14", "packages": {"peft": "0.14.0"}}
    table = _summary([pinned, other, lone])
    assert "No pinned cell to compare with: swift · aligned under peft-0.14" in table.caption
    text = render_markdown(build_report([pinned, other, lone]))
    assert "What changed between releases" in text and "peft 0.20.0 → 0.21.2" in text
