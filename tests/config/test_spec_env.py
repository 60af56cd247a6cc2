"""The spec's `env` key: optional in the JSON form, neutral in the hash, checked with one-line errors."""

import pytest

from harness.config.envs import available, canonical, load_env
from harness.config.spec import make_spec, parse_set, spec_hash
from harness.config.suite import load_suite
from harness.errors import UserError
from harness.run_spec import DEFAULTS, Spec


def test_env_defaults_to_the_main_environment_and_stays_out_of_the_json_form():
    assert Spec().env is None and "env" not in DEFAULTS and "env" not in make_spec().to_dict()


def test_the_default_env_keeps_the_hash_and_an_env_changes_it():
    plain = make_spec()
    assert spec_hash(plain) == spec_hash({**plain.to_dict(), "env": None})  # an explicit null too
    other = make_spec({"env": "peft-0.21"})
    assert other.env == "peft-0.21" and other.to_dict()["env"] == "peft-0.21"
    assert spec_hash(other) != spec_hash(plain)
    assert spec_hash(make_spec({"env": "peft==0.21.2"})) not in (spec_hash(plain), spec_hash(other))
    assert Spec.from_dict(other.to_dict()) == other


def test_a_suite_cell_with_an_env_gets_its_own_run_id(tmp_path):
    suite = tmp_path / "s.yaml"
    suite.write_text("name: s\nmatrix: {env: [null, peft-0.21]}\n")
    _, cells = load_suite(suite)
    assert len({c.run_id for c in cells}) == 2
    assert cells[0].spec_hash == spec_hash(make_spec())


def test_env_can_be_set_from_the_command_line():
    assert make_spec(parse_set(["env=peft==0.21.2"])).env == "peft==0.21.2"


@pytest.mark.parametrize("value, message", [
    ("peft-0.2l", "did you mean 'peft-0.21'"),
    ("no/such", "a name is letters"),
    ("peft==", "not a package name and an exact version"),
    ("", "env must be a name"),
    (3, "env must be a name"),
])
def test_a_bad_env_is_one_line_naming_it(value, message):
    with pytest.raises(UserError, match=message) as exc:
        make_spec({"env": value}, source="suite.yaml")
    assert "\n" not in str(exc.value) and str(exc.value).startswith("suite.yaml:")


def test_a_misspelt_top_level_key_suggests_env():
    with pytest.raises(UserError, match="did you mean 'env'"):
        make_spec({"evn": "peft-0.21"})


def test_an_env_that_leaves_out_the_framework_is_refused():
    with pytest.raises(UserError, match="leaves out ms-swift, which framework swift needs"):
        make_spec({"framework": "swift", "env": "peft-0.21"})


def test_inline_pins_are_normalised_and_name_the_environment():
    env = load_env("Peft==0.21.2, MS_Swift==4.6.0")
    assert env.packages == (("ms-swift", "4.6.0"), ("peft", "0.21.2"))
    assert env.name == "ms-swift-4.6.0_peft-0.21.2" and canonical("ms.Swift") == "ms-swift"


def test_every_shipped_definition_loads():
    assert "peft-0.21" in available()
    for name in available():
        assert load_env(name).packages


def test_an_env_file_with_a_float_version_or_an_unknown_key_is_refused(tmp_path, monkeypatch):
    import harness.config.envs as envs

    monkeypatch.setattr(envs, "ENVS_DIR", tmp_path)
    (tmp_path / "a.yaml").write_text("packages: {peft: 0.20}\n")
    (tmp_path / "b.yaml").write_text("packages: {peft: '0.20.0'}\nwithuot: [ms-swift]\n")
    with pytest.raises(UserError, match="write the version as a string"):
        load_env("a")
    with pytest.raises(UserError, match="did you mean 'without'"):
        load_env("b")


def test_a_framework_outside_the_main_environment_trains_in_its_own_set():
    spec = make_spec({"framework": "llamafactory"})
    assert spec.env == "llamafactory-0.9.5"  # the default set, so the run id says where it trained
    with pytest.raises(UserError, match="does not install llamafactory.*use env: llamafactory-0.9.5"):
        make_spec({"framework": "llamafactory", "env": "peft-0.21"})
    with pytest.raises(UserError, match="train_on_prompt also supervises the image pad tokens"):
        make_spec({"framework": "llamafactory", "train": {"label_mask": "all"}})


def test_follow_releases_pins_by_name_and_pattern(tmp_path, monkeypatch):
    import harness.config.envs as envs

    monkeypatch.setattr(envs, "ENVS_DIR", tmp_path)
    (tmp_path / "t.yaml").write_text("packages: {torch: '2.15.0'}\nfollow: [triton, NVIDIA-*]\n")
    (tmp_path / "bad.yaml").write_text("packages: {torch: '2.15.0'}\nfollow: ['nvidia/*']\n")
    env = load_env("t")
    assert env.follow == ("nvidia-*", "triton")
    assert env.follows("nvidia-cublas") and env.follows("triton") and not env.follows("torchvision")
    with pytest.raises(UserError, match="follow must be a list of package names or patterns"):
        load_env("bad")
