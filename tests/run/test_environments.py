"""Per-cell environments: the lock's hash, uv's failure as one line, reuse without uv, the worker's Python."""

import json
import sys
import time

import pytest

from harness.config.envs import EnvDef, load_env
from harness.errors import UserError
from harness.run import environments
from harness.run.launch import worker_command


@pytest.fixture
def envs_root(tmp_path, monkeypatch):
    """Environments under tmp_path; uv offline with an empty cache, so nothing reaches the network."""
    monkeypatch.setattr(environments, "ENVS_ROOT", tmp_path / "envs")
    monkeypatch.setenv("UV_OFFLINE", "1")
    monkeypatch.setenv("UV_CACHE_DIR", str(tmp_path / "uv-cache"))
    return tmp_path / "envs"


def test_read_lock_normalises_names_and_skips_comments_and_markers():
    text = "# pinned\nMS_Swift==4.6.0\npeft==0.20.0  # why\ntorch==2.14.1 ; sys_platform == 'linux'\n-e .\n"
    assert environments.read_lock(text) == {"ms-swift": "4.6.0", "peft": "0.20.0", "torch": "2.14.1"}


def test_the_lock_hash_is_over_the_resolved_set_not_its_order():
    a = environments.lock_sha256({"peft": "0.21.2", "torch": "2.14.1"})
    assert a == environments.lock_sha256({"torch": "2.14.1", "peft": "0.21.2"})
    assert a != environments.lock_sha256({"peft": "0.20.0", "torch": "2.14.1"})
    assert len(a) == 64


def test_the_directory_key_changes_with_the_definition_only():
    peft = load_env("peft==0.21.2")
    assert environments.env_dir(peft) == environments.env_dir(load_env("PEFT==0.21.2"))
    assert environments.env_dir(peft) != environments.env_dir(load_env("peft==0.21.1"))
    assert environments.env_dir(peft).name.startswith("peft-0.21.2-")


def test_uv_errors_become_one_line():
    text = ("error: No solution found when resolving dependencies\n  cause: Because there is no version of "
            "peft==9.9.9 and you require peft==9.9.9, we can conclude that your requirements are unsatisfiable.\n")
    line = environments.one_line(text)
    assert "\n" not in line and line.startswith("No solution found") and "peft==9.9.9" in line
    assert len(environments.one_line("x" * 5000)) == 600


def test_an_environment_that_cannot_resolve_fails_fast_in_one_line(envs_root):
    """Offline with an empty cache nothing resolves: uv names the first package it could not find."""
    t0 = time.perf_counter()
    with pytest.raises(UserError) as exc:
        environments.ensure(load_env("peft==9.9.9"))
    message = str(exc.value)
    assert time.perf_counter() - t0 < 30
    assert "\n" not in message and message.startswith("env peft-9.9.9: No solution found")
    assert environments.find(load_env("peft==9.9.9")) is None  # nothing half-made is taken for an environment


def test_a_created_environment_is_found_without_uv(envs_root, monkeypatch):
    env = EnvDef(name="fake", packages=(("peft", "0.21.2"),))
    path = environments.env_dir(env)
    path.mkdir(parents=True)
    (path / environments.MANIFEST).write_text(json.dumps(
        {"name": "fake", "lock_sha256": "ab" * 32, "python": sys.executable, "installed": ["peft==0.21.2"],
         "packages": {"peft": "0.21.2"}}))

    def no_uv(*args, **kwargs):
        raise AssertionError("uv called for a cached environment")

    monkeypatch.setattr(environments, "_uv", no_uv)
    found = environments.ensure(env)
    assert found.path == path and found.lock_sha256 == "ab" * 32
    assert found.record() == {"name": "fake", "lock_sha256": "ab" * 32, "packages": {"peft": "0.21.2"},
                              "installed": ["peft==0.21.2"]}
    assert [e["name"] for e in environments.created()] == ["fake"]
    assert environments.remove("fake") == [path] and not path.exists()


def test_the_worker_runs_with_the_environment_python(tmp_path):
    assert worker_command("train", tmp_path / "job.json", 1)[0] == sys.executable
    cmd = worker_command("train", tmp_path / "job.json", 1, python="/envs/x/bin/python")
    assert cmd[:3] == ["/envs/x/bin/python", "-m", "harness.run.worker"]
    assert worker_command("train", tmp_path / "job.json", 2, python="/p")[:3] == ["/p", "-m", "torch.distributed.run"]


def test_an_environment_that_cannot_resolve_fails_its_cell_and_the_others_go_on(envs_root, dummy_suite,
                                                                               mini_dataset, tmp_path):
    from harness.cli import main
    from harness.results.store import load_records, validate_record

    suite = dummy_suite(matrix={"env": [None, "peft==9.9.9"]})
    results = tmp_path / "results"
    assert main(["run", str(suite), "--results", str(results)]) == 1
    records = {r["spec"].get("env"): r for r in load_records(results)}
    assert records[None]["status"] == "ok" and "environment" not in records[None]["env"]
    bad = records["peft==9.9.9"]
    assert bad["status"] == "failed" and bad["env"]["environment"] == {"name": "peft==9.9.9"}
    assert "\n" not in bad["error"] and bad["error"].startswith("lorabench: error: env peft-9.9.9: ")
    assert validate_record({k: v for k, v in bad.items() if not k.startswith("_")}) == []


@pytest.mark.integration
def test_a_real_environment_trains_a_cell_with_its_own_releases(tmp_path, monkeypatch, dummy_suite, mini_dataset):
    """Resolves the pinned set against the package registry (seconds with uv's cache warm) and installs one
    small wheel over the main environment; the train worker then sees peft 0.21.2, evaluation the main one."""
    from harness.cli import main
    from harness.results.store import load_records

    monkeypatch.setattr(environments, "ENVS_ROOT", tmp_path / "envs")
    suite = dummy_suite(matrix={"env": ["peft-0.21"]})  # peft 0.21.2 without ms-swift (which pins peft<0.21)
    results = tmp_path / "results"
    assert main(["run", str(suite), "--results", str(results)]) == 0
    [record] = load_records(results)
    environment = record["env"]["environment"]
    assert environment["name"] == "peft-0.21" and environment["installed"] == ["peft==0.21.2"]
    assert environment["packages"]["peft"] == "0.21.2" and len(environment["lock_sha256"]) == 64
    assert environment["packages"]["torch"] == record["env"]["packages"]["torch"]  # only peft was replaced
    assert record["env"]["packages"]["peft"] != "0.21.2"  # the runner's (and the evaluator's) own
    [path] = (tmp_path / "envs").glob("peft-0.21-*/")
    assert environments._disk_mib(path) < 50  # an overlay, not a copy of torch


def test_a_swift_release_the_adapter_cannot_drive_is_named_in_one_line(monkeypatch):
    import importlib.metadata

    from adapters import swift_adapter

    monkeypatch.setattr(importlib.metadata, "version", lambda name: "3.6.4")
    with pytest.raises(UserError, match=r"^ms-swift 3\.6\.4 is not supported: the swift adapter drives the 4\.x API"):
        swift_adapter.check_release()
    monkeypatch.setattr(importlib.metadata, "version", lambda name: "4.6.0")
    assert swift_adapter.check_release() == "4.6.0"


def test_followed_pins_stay_in_the_set_unpinned_and_change_the_directory(envs_root, monkeypatch):
    """What uv is asked to resolve: the definition's pins exact, followed packages by name only."""
    asked = {}

    def fake_uv(env, args, cwd):
        asked["requirements"] = (cwd / "requirements.in").read_text()
        raise UserError("stop before installing")

    monkeypatch.setattr(environments, "_uv", fake_uv)
    plain = EnvDef(name="t", packages=(("torch", "2.15.0"),))
    follow = EnvDef(name="t", packages=(("torch", "2.15.0"),), follow=("nvidia-*", "triton"))
    assert environments.env_dir(plain) != environments.env_dir(follow)
    with pytest.raises(UserError, match="stop before installing"):
        environments.ensure(follow)
    lines = asked["requirements"].splitlines()
    assert "torch==2.15.0" in lines and "triton" in lines and "nvidia-cublas" in lines
    assert not any(line.startswith(("triton==", "nvidia-cublas==", "torch==2.14")) for line in lines)
    assert any(line.startswith("peft==") for line in lines)  # everything else stays pinned
