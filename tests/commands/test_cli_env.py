"""`lorabench env list / create / remove`: the listing, and a user's mistake as one line with exit status 2."""

import json
import sys

import pytest

from harness.cli import main
from harness.config.envs import load_env
from harness.run import environments


@pytest.fixture
def envs_root(tmp_path, monkeypatch):
    monkeypatch.setattr(environments, "ENVS_ROOT", tmp_path / "envs")
    monkeypatch.setenv("UV_OFFLINE", "1")  # nothing here may reach the network
    monkeypatch.setenv("UV_CACHE_DIR", str(tmp_path / "uv-cache"))
    return tmp_path / "envs"


def _fake_created(name: str) -> None:
    path = environments.env_dir(load_env(name))
    path.mkdir(parents=True)
    (path / environments.MANIFEST).write_text(json.dumps(
        {"name": name, "lock_sha256": "cd" * 32, "python": sys.executable, "installed": ["peft==0.21.2"],
         "packages": {"peft": "0.21.2", "torch": "2.14.1"}}))


def test_list_shows_definitions_and_created_environments(envs_root, capsys):
    assert main(["env", "list"]) == 0
    out = capsys.readouterr().out
    assert "peft-0.21" in out and "peft==0.21.2" in out and "(none)" in out
    _fake_created("peft-0.21")
    assert main(["env", "list"]) == 0
    assert "lock cdcdcdcdcdcd" in capsys.readouterr().out


def test_create_reuses_a_cached_environment(envs_root, capsys):
    _fake_created("peft-0.21")
    assert main(["env", "create", "peft-0.21"]) == 0
    assert "env peft-0.21: cached at" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["env", "create", "peft-0.2l"], "did you mean 'peft-0.21'"),
    (["env", "create", "peft==9.9.9"], "env peft-9.9.9: No solution found"),
    (["env", "remove", "nothing-here"], "no created environment"),
])
def test_mistakes_are_one_line(envs_root, capsys, argv, message):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


def test_remove_deletes_the_directories(envs_root, capsys):
    _fake_created("peft-0.21")
    assert main(["env", "remove", "peft-0.21"]) == 0
    assert "removed" in capsys.readouterr().out and not list(envs_root.glob("peft-0.21-*/"))
