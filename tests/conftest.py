"""Shared test settings: offline always; the repo root importable without installation."""

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    # one worker per core already fills the machine: a worker's torch (and the training processes it
    # starts) taking every core as well would oversubscribe it (a lane or a test may still set its own)
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1)
                                                    // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))))


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def mini_dataset() -> Path:
    """The mini card's build (a second or two; verified against the card's checksum)."""
    from harness.data.cards import ensure_built

    return Path(ensure_built("synthdocs-mini"))


@pytest.fixture(scope="session")
def tiny_model_dir() -> Path:
    """A tiny checkpoint: the built one when present, else a quick build (seconds of pre-training).

    Integration tests check mechanics (alignment, records, resume), not quality, so a barely
    trained model is enough and keeps `make test` independent of the committed checkpoint.
    """
    from harness.errors import UserError
    from harness.tinymodel.build import ASSET_DIR, BuildPlan, CACHE_DIR, build_tiny_model, tiny_checkpoint

    try:
        return tiny_checkpoint()
    except UserError:
        if (ASSET_DIR / "config.json").is_file():  # committed by an earlier recipe: same architecture
            return ASSET_DIR
        path, _ = build_tiny_model(BuildPlan(card="synthdocs-mini", steps=30, random_pages=100, label_pages=100,
                                                  instruction_steps=10), out_dir=CACHE_DIR / "test-quick",
                        progress=False, eval_every=0, quality_samples=4)
        return path


@pytest.fixture(scope="session")
def tiny_minicpmv_dir() -> Path:
    """The tiny MiniCPM-V: the built one when present, else a quick build (mechanics, not quality)."""
    from harness.errors import UserError
    from harness.tinymodel.build import FAMILIES, BuildPlan, CACHE_DIR, build_tiny_model, tiny_checkpoint

    try:
        return tiny_checkpoint(BuildPlan(family="minicpmv"))
    except UserError:
        asset = FAMILIES["minicpmv"][1]
        if (asset / "config.json").is_file():  # committed by an earlier recipe: same architecture
            return asset
        path, _ = build_tiny_model(BuildPlan(family="minicpmv", card="synthdocs-mini", steps=12, random_pages=40,
                                             label_pages=40, instruction_steps=4),
                                   out_dir=CACHE_DIR / "test-quick-minicpmv", progress=False, eval_every=0,
                                   quality_samples=4)
        return path


# A few steps of the dummy adapter on the mini dataset, no evaluation: a suite that runs in seconds.
DUMMY_DEFAULTS = {"framework": "dummy", "dataset": "synthdocs-mini", "task": "extract",
                  "train": {"steps": 3, "batch_size": 2, "grad_accum": 1, "max_train_samples": 8},
                  "eval": {"enabled": False}}


@pytest.fixture
def dummy_suite(tmp_path):
    """`dummy_suite(name="fast", **doc) -> Path`: a suite file of dummy-adapter cells with DUMMY_DEFAULTS,
    on a checkpoint directory as far as the dummy adapter looks (a config.json); `doc` adds suite keys."""
    import json

    import yaml

    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"text_config": {"hidden_size": 8, "num_attention_heads": 2}}))

    def make(name: str = "fast", **doc) -> Path:
        path = tmp_path / "suite.yaml"
        path.write_text(yaml.safe_dump({"name": name, "defaults": {**DUMMY_DEFAULTS, "model": str(model)}, **doc}))
        return path

    return make
