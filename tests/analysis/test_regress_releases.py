"""`lorabench regress` between one suite trained under two environments names the releases that differ."""

from __future__ import annotations

from tests import fixtures_records as fx

from harness.cli import main
from harness.results.store import env_fingerprint_diff, training_environment, training_releases

SEEN_021 = {"torch": "2.14.1", "transformers": "5.19.0", "peft": "0.21.2", "ms-swift": "4.6.0"}


def _environment(name="peft-0.21", lock="8b3a5c836f28" + "0" * 52, seen=SEEN_021):
    return {"name": name, "lock_sha256": lock, "packages": dict(seen), "installed": ["peft==0.21.2"]}


def test_a_run_in_its_own_environment_differs_by_name_and_by_the_releases_its_worker_saw():
    main_env, other = fx.make_env(), fx.make_env(environment=_environment())
    assert training_environment(main_env) == "main" and training_environment(other) == "peft-0.21"
    assert training_releases(other)["peft"] == "0.21.2" and training_releases(other)["jiwer"] == "4.0.0"
    assert env_fingerprint_diff(main_env, other) == ["trained in: main != peft-0.21",
                                                     "trained with peft: 0.20.0 != 0.21.2"]
    assert env_fingerprint_diff(other, fx.make_env(environment=_environment())) == []


def test_the_same_environment_name_with_another_lock_is_named():
    a = fx.make_env(environment=_environment())
    b = fx.make_env(environment=_environment(lock="ffff" * 16))
    assert env_fingerprint_diff(a, b) == ["trained in peft-0.21, lock: 8b3a5c836f28 != ffffffffffff"]


def test_a_worker_that_never_ran_counts_as_the_main_environments_releases():
    unseen = fx.make_env(environment={"name": "peft-0.21", "packages": None})
    assert training_releases(unseen) == fx.make_env()["packages"]


def test_regress_across_environments_names_the_packages_that_differ(tmp_path, capsys):
    fx.write_suite(tmp_path / "pinned", frameworks=("peft",), alignments=("aligned",), seeds=(0,))
    fx.write_suite(tmp_path / "peft-0.21", frameworks=("peft",), alignments=("aligned",), seeds=(0,),
                   env=fx.make_env(environment=_environment()))
    code = main(["regress", "--baseline", str(tmp_path / "pinned"), "--current", str(tmp_path / "peft-0.21")])
    err = capsys.readouterr().err
    assert code == 0  # the same numbers: no regression, and the difference in releases is still said
    assert "environment differs (baseline != current): trained in: main != peft-0.21" in err
    assert "environment differs (baseline != current): trained with peft: 0.20.0 != 0.21.2" in err
    assert "packages.peft" not in err  # the main environment's peft is the same on both sides
