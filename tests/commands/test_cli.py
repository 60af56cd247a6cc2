"""The command line: help, version, and one-line errors with exit status 2."""

import pytest

from harness.cli import COMMANDS, main


def test_help_lists_every_command(capsys):
    assert main([]) == 0
    out = capsys.readouterr().out
    for name in COMMANDS:
        assert name in out


def test_version(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert "lorabench 0.1.0" in capsys.readouterr().out


def test_unknown_command_is_one_line(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["frobnicate"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "invalid choice" in err and "Traceback" not in err


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_each_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as exc:
        main([command, "--help"])
    assert exc.value.code == 0


def test_missing_spec_file_is_a_user_error(capsys, tmp_path):
    assert main(["parity", str(tmp_path / "nope.yaml")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"lorabench: error: no such file: {tmp_path / 'nope.yaml'}"


def test_unknown_framework_is_a_user_error(capsys, tmp_path):
    spec = tmp_path / "s.yaml"
    spec.write_text("task: extract\n")
    assert main(["parity", str(spec), "--frameworks", "peft,keras"]) == 2
    assert ("--frameworks: framework must be one of peft, swift, llamafactory, torch, dummy, got 'keras'"
            in capsys.readouterr().err)


def test_run_with_a_bad_suite_key_is_a_user_error(capsys, tmp_path):
    suite = tmp_path / "s.yaml"
    suite.write_text("defaults: {lora: {rank: 8}}\n")
    assert main(["run", str(suite)]) == 2
    assert "unknown key 'lora.rank'" in capsys.readouterr().err
