"""`parity --ablate --profiles A,B --outcome` end to end through the CLI, with training and evaluation
replaced by a function of the spec (an arm's real run takes minutes): a planted factor must rank first,
a no-op factor must be marked as within the data-order noise, and the document must reach the report."""

import json
from pathlib import Path

import pytest
import yaml

from harness.cli import main

PLANTED_LR = 5e-5  # peft-default's learning rate: the one factor that changes the outcome here


def fake_run(spec, work, cpus=None):
    """Held-out outcome as a function of the spec: the lr moves it far, the data seed a little, nothing else."""
    assert spec.eval.enabled  # an outcome arm is always evaluated
    work.mkdir(parents=True, exist_ok=True)
    planted = spec.optim.lr == PLANTED_LR
    seed = spec.train.data_seed
    return {"heldout_loss": 1.0 + (0.5 if planted else 0.0) + 0.01 * seed,
            "field_f1": 0.6 - (0.3 if planted else 0.0) + 0.02 * seed, "field_anls": 0.7, "cer": 0.1}


@pytest.fixture(autouse=True)
def fresh_build_checksums():
    """The checksums of the model and dataset builds are kept per process: each test builds its own model."""
    from harness.analysis.arm_records import _builds

    _builds.cache_clear()
    yield
    _builds.cache_clear()


def record_file(records, doc):
    return records / f"{doc['spec_hash']}.json"


@pytest.fixture
def counted_runs(monkeypatch):
    """fake_run in place of training, and the (lr, data seed) of every arm run it was asked for."""
    calls = []

    def counted_run(spec, work, cpus=None):
        calls.append((spec.optim.lr, spec.train.data_seed))
        return fake_run(spec, work, cpus)

    monkeypatch.setattr("harness.analysis.outcome_ablation.train_and_evaluate", counted_run)
    return calls


@pytest.fixture
def spec_file(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"text_config": {"hidden_size": 8, "num_attention_heads": 2}}))
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump({"framework": "peft", "dataset": "synthdocs-mini", "task": "extract",
                                    "model": str(model), "train": {"steps": 3, "batch_size": 2},
                                    "eval": {"enabled": False}}))
    return path


def test_outcome_ablation_ranks_the_planted_factor_and_marks_no_ops(spec_file, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("harness.analysis.outcome_ablation.train_and_evaluate", fake_run)
    out = tmp_path / "parity"
    code = main(["parity", str(spec_file), "--ablate", "--profiles", "swift-default,peft-default", "--outcome",
                 "--seeds", "0,1", "--out", str(out)])
    text = capsys.readouterr().out
    assert code == 0
    doc = json.loads((out / "outcome_ablation.swift-default-vs-peft-default.json").read_text())
    ran = [r for r in doc["effects"] if "error" not in r]
    assert ran[0]["factor"] == "lr"
    assert ran[0]["effect"]["heldout_loss"] == pytest.approx(0.5)
    assert ran[0]["effect"]["field_f1"] == pytest.approx(-0.3)
    assert ran[0]["within_noise"] == {"heldout_loss": False, "field_f1": False, "field_anls": True, "cer": True}
    assert doc["noise_floor"]["values"]["heldout_loss"] == pytest.approx(0.01)
    for row in ran[1:]:  # every other factor is a no-op here, data order sits at the floor
        assert row["within_noise"]["heldout_loss"] is True, row["factor"]
    assert "dropout" in [r["factor"] for r in ran[1:]]
    # labels on every token cannot run on swift: a row with its reason, left out of the sum and named
    assert "cannot run on swift" in next(r for r in doc["effects"] if r["factor"] == "label_mask")["error"]
    inter = doc["interaction"]  # the factors add up: nothing is left over
    assert inter["whole"] == "peft-default on peft" and inter["excluded"] == ["label_mask"]
    assert inter["interaction"]["heldout_loss"] == pytest.approx(0.0, abs=1e-12)
    assert "framework's share" in inter["note"]
    assert doc["seeds"] == [0, 1] and doc["steps"] == 3
    # the same samples for every arm: swift-default's 1 x 16 for 3 steps is 48 samples, peft-default's 8 x 1 six steps
    assert doc["budget"]["samples"] == 48
    assert doc["budget"]["arm_steps"]["swift-default"] == 3
    assert doc["budget"]["arm_steps"]["batch x accumulation"] == 6
    assert doc["budget"]["arm_steps"]["peft-default on peft"] == 6
    lines = text.splitlines()
    lr_line = next(line for line in lines if line.startswith("lr "))
    assert "+0.5 " in lr_line and "+0.5~" not in lr_line
    assert any(line.startswith("dropout") and "~" in line for line in lines)
    assert "not distinguishable from data order" in text and "Interaction" in text

    from harness.analysis.report.build import build_report, write_report
    from harness.results.store import load_parity_docs

    docs = load_parity_docs(tmp_path)
    assert [d["mode"] for d in docs] == ["outcome"]
    table = next(t for t in build_report([], docs).tables if t.key.startswith("outcome-"))
    assert table.row_labels[0] == "lr"
    assert table.rows[0][3].text == "+0.5" and table.rows[1][3].text.endswith("~")
    paths = write_report([], tmp_path / "report", docs)
    assert (paths["figures_dir"] / "outcome_ablation.png").is_file()
    assert "Why swift-default and peft-default end differently" in paths["md"].read_text()


def test_a_second_pair_sits_beside_the_first_and_resume_reuses_finished_arms(spec_file, tmp_path, counted_runs,
                                                                           capsys):
    calls = counted_runs
    out = tmp_path / "parity"
    ablate = ["parity", str(spec_file), "--ablate", "--outcome", "--out", str(out)]
    assert main([*ablate, "--profiles", "swift-default,peft-default", "--lanes", "2"]) == 0
    first_pair = len(calls)
    assert main([*ablate, "--profiles", "swift-default,minicpmv-official", "--lanes", "1"]) == 0
    assert {p.name for p in out.glob("outcome_ablation*.json")} == {
        "outcome_ablation.swift-default-vs-peft-default.json",
        "outcome_ablation.swift-default-vs-minicpmv-official.json"}
    from harness.results.store import load_parity_docs

    assert sorted(d["second"] for d in load_parity_docs(tmp_path)) == ["minicpmv-official", "peft-default"]
    before = json.loads((out / "outcome_ablation.swift-default-vs-peft-default.json").read_text())
    calls.clear()
    # an interrupted ablation, resumed: the arm runs that left their outcome are not trained again
    (out / "outcome" / "swift-default-vs-peft-default" / "lr" / "data_seed1" / "outcome.json").unlink()
    assert main([*ablate, "--profiles", "swift-default,peft-default", "--resume"]) == 0
    assert calls == [(PLANTED_LR, 1)] and first_pair > 1
    assert "(reused: recorded in its work dir at commit" in capsys.readouterr().out
    after = json.loads((out / "outcome_ablation.swift-default-vs-peft-default.json").read_text())
    assert after["effects"] == before["effects"] and after["noise_floor"] == before["noise_floor"]


@pytest.mark.parametrize("args, message", [
    (["--ablate", "--outcome"], "--outcome goes with --ablate --profiles A,B"),
    (["--outcome", "--profiles", "swift-default,peft-default"], "--profiles goes with --ablate"),
    (["--ablate", "--profiles", "swift-default,peft-default", "--outcome", "--seeds", "0"],
     "needs at least two data seeds"),
    (["--ablate", "--profiles", "swift-default,peft-default", "--outcome", "--seeds", "0,x"],
     "--seeds takes comma-separated integers"),
    (["--ablate", "--profiles", "swift-default,peft-default", "--outcome", "--lanes", "0"],
     "--lanes: lanes must be a positive whole number or 'auto'"),
])
def test_outcome_mistakes_are_one_line(spec_file, tmp_path, capsys, args, message):
    assert main(["parity", str(spec_file), "--out", str(tmp_path / "p"), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err and "Traceback" not in err


def test_a_users_recipe_files_as_profiles(spec_file, tmp_path, monkeypatch, capsys):
    """My swift command against my colleague's run, each a YAML file of spec overrides."""
    monkeypatch.setattr("harness.analysis.outcome_ablation.train_and_evaluate", fake_run)
    mine = tmp_path / "my-swift.yaml"
    mine.write_text("alignment: swift-default\nlora: {r: 16}\noptim: {lr: 2.0e-4}\n")
    theirs = tmp_path / "colleague.yaml"
    theirs.write_text(f"framework: peft\nlora: {{r: 16}}\noptim: {{lr: {PLANTED_LR}}}\n"
                      "train: {batch_size: 1, grad_accum: 16, data_order: sampler}\n")
    out = tmp_path / "parity"
    assert main(["parity", str(spec_file), "--ablate", "--profiles", f"{mine},{theirs}", "--outcome",
                 "--out", str(out)]) == 0
    doc = json.loads((out / "outcome_ablation.my-swift-vs-colleague.json").read_text())
    assert (doc["first"], doc["second"], doc["framework"]) == ("my-swift", "colleague", "swift")
    rows = {r["factor"]: r for r in doc["effects"]}
    assert rows["lr"]["values"] == {"my-swift": [2e-4], "colleague": [PLANTED_LR]}
    assert "rank" not in rows  # both set r 16: not a difference
    assert doc["effects"][0]["factor"] == "lr"
    assert [t["factor"] for t in doc["totals"]] == ["colleague on swift", "colleague on peft"]
    assert "Why my-swift and colleague end differently" in capsys.readouterr().out


@pytest.mark.parametrize("content, message", [
    ("lora: {rank: 16}\n", "unknown key 'lora.rank'"),
    ("alignment: native\n", "alignment must be aligned or a profile"),
])
def test_a_bad_recipe_file_is_one_line(spec_file, tmp_path, capsys, content, message):
    recipe = tmp_path / "mine.yaml"
    recipe.write_text(content)
    assert main(["parity", str(spec_file), "--ablate", "--profiles", f"{recipe},swift-default", "--outcome",
                 "--out", str(tmp_path / "p")]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err


def test_a_profile_against_itself_is_one_line(spec_file, tmp_path, capsys):
    assert main(["parity", str(spec_file), "--ablate", "--profiles", "swift-default,swift-default",
                 "--out", str(tmp_path / "p")]) == 2
    assert "both are named 'swift-default'" in capsys.readouterr().err


def test_an_unknown_profile_name_lists_the_valid_ones(spec_file, tmp_path, capsys):
    assert main(["parity", str(spec_file), "--ablate", "--profiles", "swift-defualt,peft-default",
                 "--out", str(tmp_path / "p")]) == 2
    assert "unknown profile 'swift-defualt' (valid: swift-default" in capsys.readouterr().err


def test_the_step_loss_profile_ablation_is_kept_per_pair(spec_file, tmp_path, monkeypatch):
    seen = []

    def fake_ablate_profiles(base, first, second, out_dir, progress):
        seen.append(out_dir)
        return {"first": first, "second": second, "framework": "swift", "steps": 3, "first_final_loss": 1.0,
                "factors": [], "totals": []}

    monkeypatch.setattr("harness.analysis.parity.ablate_profiles", fake_ablate_profiles)
    out = tmp_path / "parity"
    for pair in ("swift-default,minicpmv-official", "swift-default,peft-default"):
        assert main(["parity", str(spec_file), "--ablate", "--profiles", pair, "--out", str(out)]) == 0
    assert sorted(p.name for p in out.glob("profile_ablation*.json")) == [
        "profile_ablation.swift-default-vs-minicpmv-official.json",
        "profile_ablation.swift-default-vs-peft-default.json"]
    assert seen == [out / "profiles" / "swift-default-vs-minicpmv-official",
                    out / "profiles" / "swift-default-vs-peft-default"]


def test_records_carry_an_ablation_to_another_clone_and_are_checked_before_reuse(spec_file, tmp_path, counted_runs,
                                                                                capsys):
    """--records keeps one JSON per arm run; a fresh --out (another clone) resumes from them, but not from
    a record made on another model build or under other releases; a baseline two pairs share runs once."""
    calls = counted_runs
    records = tmp_path / "records"
    ablate = ["parity", str(spec_file), "--ablate", "--outcome", "--lanes", "1", "--records", str(records),
              "--profiles", "swift-default,peft-default"]
    assert main([*ablate, "--out", str(tmp_path / "first")]) == 0
    trained = len(calls)
    files = sorted(records.glob("*.json"))
    assert len(files) == trained
    docs = [json.loads(f.read_text()) for f in files]
    for doc, path in zip(docs, files):
        assert path == record_file(records, doc) and doc["outcome"]["heldout_loss"] is not None
        env = doc["env"]
        assert env["model"]["checksum"] and env["dataset"]["checksum"] and env["packages"]["torch"]
        assert "git_commit" in env and env["cpu"]
    first = json.loads((tmp_path / "first" / "outcome_ablation.swift-default-vs-peft-default.json").read_text())
    capsys.readouterr()

    calls.clear()  # another clone: empty work dirs, the committed records
    assert main([*ablate, "--out", str(tmp_path / "second"), "--resume"]) == 0
    assert calls == []
    second = json.loads((tmp_path / "second" / "outcome_ablation.swift-default-vs-peft-default.json").read_text())
    assert second["effects"] == first["effects"] and len(second["reused"]) == trained
    assert f"{trained} arm runs reused from earlier runs" in capsys.readouterr().out

    by_label = {(d["label"], d["data_seed"]): f for d, f in zip(docs, files)}
    stale_model = json.loads(by_label["lr", 0].read_text())
    stale_model["env"]["model"]["checksum"] = "another-build"
    by_label["lr", 0].write_text(json.dumps(stale_model))
    other_release = json.loads(by_label["lr", 1].read_text())
    other_release["env"]["packages"]["torch"] = "0.0.1"
    by_label["lr", 1].write_text(json.dumps(other_release))
    capsys.readouterr()
    assert main([*ablate, "--out", str(tmp_path / "third"), "--resume"]) == 0
    assert sorted(calls) == [(PLANTED_LR, 0), (PLANTED_LR, 1)]
    text = capsys.readouterr().out
    assert ("lr, data seed 0: the record in " + str(records) + " is not reused, it ran on something else: "
            "model.checksum: another-build != ") in text
    assert "lr, data seed 1: the record in" in text and "packages.torch: 0.0.1 != " in text
    assert json.loads(by_label["lr", 0].read_text())["env"]["model"]["checksum"] != "another-build"  # replaced

    # a work dir's record is checked too: one from another build is not reused, nor copied over the good record
    work = tmp_path / "first" / "outcome" / "swift-default-vs-peft-default" / "alpha" / "data_seed0"
    stale = json.loads((work / "outcome.json").read_text())
    stale["env"]["dataset"]["checksum"] = "another-build"
    (work / "outcome.json").write_text(json.dumps(stale))
    old_format = work.parent / "data_seed1" / "outcome.json"  # what an ablation before records left
    old_format.write_text(json.dumps({k: json.loads(old_format.read_text())[k] for k in ("spec_hash", "outcome")}))
    committed = {d["label"]: d for d in map(json.loads, map(Path.read_text, records.glob("*.json")))}["alpha"]
    calls.clear()
    assert main([*ablate, "--out", str(tmp_path / "first"), "--resume"]) == 0
    assert calls == []
    text = capsys.readouterr().out
    assert ("alpha, data seed 0: the record in its work dir is not reused, it ran on something else: "
            "dataset.checksum") in text
    assert "alpha, data seed 1: the record in its work dir is not reused, it does not say what it ran on" in text
    assert f"alpha, data seed 0: swift, 3 steps of 16 (reused: recorded in {records}" in text
    assert json.loads(record_file(records, committed).read_text()) == committed

    calls.clear()  # another pair with the same baseline: the baseline's runs are reused
    assert main([*ablate[:-1], "swift-default,minicpmv-official", "--out", str(tmp_path / "third"), "--resume"]) == 0
    text = capsys.readouterr().out
    for seed in (0, 1):
        assert f"swift-default, data seed {seed}: swift, 3 steps of 16 (reused: recorded in {records}" in text
    assert len(calls) == text.count(" ...\n") > 0
