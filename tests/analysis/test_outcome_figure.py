"""The outcome ablation's figure, from an attribution of planted arms: the factors ranked, the noise
shown, and the sum of the single factors next to the whole recipe so an interaction reads off it."""

from __future__ import annotations

import pytest

from harness.analysis import figures
from harness.analysis.attribution import DATA_ORDER, attribute
from harness.analysis.report.outcome_ablation import outcome_figure
from tests.analysis.figure_checks import problems


def _outcome(loss: float, cer: float, f1: float = 0.0) -> dict:
    return {"heldout_loss": loss, "cer": cer, "field_f1": f1}


def _doc() -> dict:
    """lr moves the loss far and CER a little; `noop` moves nothing; alone each lowers CER, yet the whole
    recipe raises it (a planted interaction); field F1 never moves."""
    arms = {
        "A": {0: _outcome(2.000, 0.800), 1: _outcome(2.002, 0.801)},
        "lr": {0: _outcome(3.000, 0.760), 1: _outcome(3.003, 0.761)},
        "noop": {0: _outcome(2.000, 0.800), 1: _outcome(2.002, 0.802)},
        "B on swift": {0: _outcome(3.200, 0.950), 1: _outcome(3.201, 0.950)},
    }
    doc = attribute(arms, "A", ["lr", "noop"], ["B on swift"], metrics=["heldout_loss", "field_f1", "cer"])
    return {**doc, "first": "A", "second": "B"}


def test_rows_rank_factors_then_the_sum_then_the_whole_recipe():
    inputs = outcome_figure(_doc())
    assert inputs["labels"] == ["lr", DATA_ORDER, "noop", "sum of the single factors", "B on swift (all at once)"]
    assert inputs["kinds"] == ["factor", "factor", "factor", "sum", "whole"]


def test_panels_are_the_ranking_metric_and_the_extraction_metric_that_moved():
    loss, cer = outcome_figure(_doc())["panels"]  # field F1 never left its floor: no panel
    assert loss["xlabel"].startswith("Δ held-out loss") and cer["xlabel"].startswith("Δ CER")
    assert loss["within"] == [False, True, True, False, False]  # the seeds' range and noop lie within the floor
    assert cer["values"][3] < 0 < cer["values"][4]  # the sum lowers CER, the whole raises it: they interact
    assert loss["floor"] == pytest.approx(0.003)  # the widest arm's spread between seeds (lr's)


def test_figure_names_every_row_and_keeps_text_on_the_figure():
    fig = figures.effect_panels_figure(**outcome_figure(_doc()))
    assert len(fig.axes) == 2
    ticks = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    assert ticks == outcome_figure(_doc())["labels"]
    assert problems(fig) == []
