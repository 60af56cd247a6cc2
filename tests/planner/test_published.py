"""`lorabench plan --validate-published`: the cited set, the fit / check split, bounds and the CLI."""

from __future__ import annotations

import json

from harness.cli import main
from harness.planner import memory, published


def test_every_row_is_cited_and_the_set_is_large_enough():
    rows = published.load_rows()
    assert len(rows) >= 15 and len({r["source"]["repo"] + r["source"]["path"] for r in rows}) >= 3
    assert sum(r["setup"]["zero"] == 3 or r["setup"].get("offload_optimizer", False) for r in rows) >= 5
    for r in rows:
        assert r["source"].get("commit") or r["source"].get("url"), r["id"]
        assert r["where"] and r["unit"] in published.UNITS
    assert {r["half"] for r in rows} == {"fit", "check"}


def test_the_planners_fragmentation_factor_is_the_one_fitted_on_the_fit_half():
    assert published.fit_fragmentation(published.load_rows()) == memory.FRAGMENTATION_FACTOR


def test_a_bound_is_an_error_only_outside_its_interval():
    inside = published.Row("a", "check", "bound", False, 10.0, 8.0, 12.0, "s")
    above = published.Row("b", "check", "bound", False, 15.0, 8.0, 12.0, "s")
    point = published.Row("c", "check", "point", False, 10.0, 11.0, 11.0, "s")
    assert inside.error == 0.0 and abs(above.error - 0.2) < 1e-12 and abs(point.error - 0.1) < 1e-12


def test_the_band_comes_from_held_out_rows_only():
    rows = (published.Row("f", "fit", "point", False, 20.0, 10.0, 10.0, "s"),  # fit half: ignored
            published.Row("c", "check", "point", False, 11.0, 10.0, 10.0, "s"),
            published.Row("d", "check", "bound", False, 9.0, 8.0, 12.0, "s"))  # inside: not the planner's error
    band = published.Validation(rows, 1.2).band
    assert (band.low, band.high) == (1.0, 1.1)


def test_cli_validate_published(capsys):
    assert main(["plan", "--validate-published"]) == 0
    text = capsys.readouterr().out
    assert "held-out error, all rows:" in text and "held-out error, ZeRO-3/offload rows:" in text
    assert "swift-caption-qwen2vl7b" in text and "est/pub" in text
    assert main(["plan", "--validate-published", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert len(out["rows"]) >= 15 and {"low", "high"} <= set(out["band"])
