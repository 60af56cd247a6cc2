"""The outcome ablation's arithmetic on synthetic numbers: effects, noise floor, within-noise marks, interaction."""

import pytest

from harness.analysis.attribution import DATA_ORDER, attribute, noise_floor, outcome_of, paired_effect, seed_range


def arm(*losses, f1=None):
    """Outcomes under data seeds 0, 1, ...: held-out loss per seed (field F1 per seed if given)."""
    return {s: {"heldout_loss": v, "field_f1": None if f1 is None else f1[s]} for s, v in enumerate(losses)}


def test_effect_is_the_mean_of_paired_differences_under_the_same_seed():
    effect, per_seed = paired_effect(arm(1.5, 1.8), arm(1.0, 1.2), "heldout_loss")
    assert per_seed == pytest.approx([0.5, 0.6])
    assert effect == pytest.approx(0.55)


def test_a_seed_missing_from_either_arm_is_left_out_of_the_pairing():
    arm_a = {0: {"heldout_loss": 2.0}, 1: {"heldout_loss": None}}
    effect, per_seed = paired_effect(arm_a, arm(1.0, 1.2), "heldout_loss")
    assert per_seed == [1.0] and effect == 1.0
    assert paired_effect({0: {"heldout_loss": None}}, arm(1.0), "heldout_loss") == (None, [])


def test_noise_floor_is_the_largest_seed_range_of_any_arm():
    arms = {"base": arm(1.0, 1.1), "lr": arm(3.0, 3.02), "dropout": arm(1.0, 0.75)}
    assert seed_range(arms["base"], "heldout_loss") == pytest.approx(0.1)
    assert noise_floor(arms, ["heldout_loss"])["heldout_loss"] == pytest.approx(0.25)
    assert seed_range(arm(1.0), "heldout_loss") is None  # one seed: no spread to measure
    assert noise_floor({"base": arm(1.0)}, ["heldout_loss"]) == {"heldout_loss": None}


def test_factors_ranked_by_effect_and_within_noise_marked():
    arms = {"base": arm(1.0, 1.1), "lr": arm(2.0, 2.1), "dropout": arm(1.05, 1.1), "whole": arm(2.0, 2.2)}
    doc = attribute(arms, "base", ["lr", "dropout"], ["whole"], metrics=["heldout_loss"])
    rows = {r["factor"]: r for r in doc["effects"]}
    assert [r["factor"] for r in doc["effects"]] == ["lr", DATA_ORDER, "dropout"]
    assert doc["noise_floor"]["values"]["heldout_loss"] == pytest.approx(0.2)  # the whole recipe's seeds
    assert rows["lr"]["effect"]["heldout_loss"] == pytest.approx(1.0)
    assert rows["lr"]["within_noise"]["heldout_loss"] is False
    assert rows["dropout"]["effect"]["heldout_loss"] == pytest.approx(0.025)
    assert rows["dropout"]["within_noise"]["heldout_loss"] is True
    # data order: the range between the baseline's own seeds, inside the floor by construction
    assert rows[DATA_ORDER]["effect"]["heldout_loss"] == pytest.approx(0.1)
    assert rows[DATA_ORDER]["within_noise"]["heldout_loss"] is True


def test_an_effect_equal_to_the_floor_is_within_it():
    arms = {"base": arm(1.0, 1.5), "x": arm(1.5, 2.0)}
    doc = attribute(arms, "base", ["x"], [], metrics=["heldout_loss"])
    assert doc["effects"][0]["within_noise"]["heldout_loss"] is True
    assert doc["interaction"] is None  # no whole-recipe arm


def test_interaction_is_the_whole_recipe_minus_the_sum_of_single_factors():
    arms = {"base": arm(1.0, 1.0), "a": arm(1.3, 1.3), "b": arm(1.2, 1.2), "whole on home": arm(2.5, 2.5),
            "whole on other": arm(2.6, 2.6)}
    doc = attribute(arms, "base", ["a", "b", "c"], ["whole on home", "whole on other"], metrics=["heldout_loss"])
    inter = doc["interaction"]
    assert inter["whole"] == "whole on home"
    assert inter["sum_of_factors"]["heldout_loss"] == pytest.approx(0.5)
    assert inter["whole_effect"]["heldout_loss"] == pytest.approx(1.5)
    assert inter["interaction"]["heldout_loss"] == pytest.approx(1.0)
    assert inter["within_noise"]["heldout_loss"] is False  # floor 0: every seed agrees
    assert inter["excluded"] == ["c"]  # a factor that did not run is named, not silently summed as 0
    assert [t["factor"] for t in doc["totals"]] == ["whole on home", "whole on other"]


def test_metrics_a_task_lacks_stay_none_and_unmarked():
    arms = {"base": arm(1.0, 1.1, f1=[0.5, 0.6]), "x": arm(1.0, 1.1, f1=[0.9, 1.0])}
    doc = attribute(arms, "base", ["x"], [], metrics=["heldout_loss", "field_f1", "cer"])
    x = next(r for r in doc["effects"] if r["factor"] == "x")
    assert x["effect"]["field_f1"] == pytest.approx(0.4) and x["within_noise"]["field_f1"] is False
    assert x["effect"]["cer"] is None and x["within_noise"]["cer"] is None


def test_outcome_of_an_eval_summary():
    summary = {"metrics": {"field_f1": 0.5, "field_anls": 0.6, "cer": 0.1, "n": 3}, "heldout_loss": {"loss": 0.7}}
    assert outcome_of(summary) == {"heldout_loss": 0.7, "field_f1": 0.5, "field_anls": 0.6, "cer": 0.1}
    assert outcome_of({"metrics": {"cer": 0.2}})["heldout_loss"] is None  # an eval.json written before it
