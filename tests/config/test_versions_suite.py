"""The version-matrix suite: the pinned set and every release set it names, each definition saying why."""

import re
from pathlib import Path

import yaml

from harness.config.envs import ENVS_DIR, available, load_env
from harness.config.suite import load_suite
from harness.paths import HARNESS_DIR

SUITE = HARNESS_DIR / "suites" / "versions.yaml"


def test_the_matrix_runs_the_pinned_set_and_at_least_four_release_sets():
    _, cells = load_suite(SUITE)
    envs = {c.spec.env for c in cells}
    assert None in envs and len(envs - {None}) >= 3
    assert envs - {None} <= set(available())
    for env in envs - {None}:  # every set is compared with the pinned set on the same framework and alignment
        for cell in (c for c in cells if c.spec.env == env):
            assert any(c.spec.env is None and c.key["framework"] == cell.key["framework"]
                       and c.key["alignment"] == cell.key["alignment"] for c in cells)


def test_the_cells_are_short_so_the_matrix_runs_in_minutes():
    _, cells = load_suite(SUITE)
    assert all(c.spec.train.steps <= 8 and c.spec.eval.max_samples <= 8 for c in cells)


def test_every_release_set_says_why_it_is_there_and_which_release_it_pins():
    for name in available():
        text = (ENVS_DIR / f"{name}.yaml").read_text()
        comment = " ".join(line for line in text.splitlines() if line.startswith("#"))
        assert len(comment) > 80, f"{name}: no comment saying why this set is there"
        for _package, version in load_env(name).packages:
            assert version in comment or version in str(yaml.safe_load(text).get("description")), name
        assert re.search(r"lorabench env create " + re.escape(name), text), name


def test_the_suite_begins_with_the_command_that_runs_it_and_make_has_its_own_target():
    assert SUITE.read_text().startswith("# lorabench run harness/suites/versions.yaml")
    makefile = (Path(HARNESS_DIR).parent / "Makefile").read_text()
    target = makefile.split("\nversions:", 1)[1].split("\n\n", 1)[0]
    assert "harness/suites/versions.yaml" in target
    for other in ("test", "benchmark"):  # the pinned environment only: no release set there
        body = makefile.split(f"\n{other}:", 1)[1].split("\n\n", 1)[0]
        assert "versions" not in body and "env" not in body.replace("$(VENV)", "")
