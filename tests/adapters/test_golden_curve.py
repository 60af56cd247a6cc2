"""A stored loss curve guards against a change shared by every framework.

Parity compares the frameworks with each other, so a regression that moves all three together
(a collator, the prompt contract, the tiny model, the data) passes it. This test runs the torch
reference on the parity spec and compares its 20 losses with the stored ones within 1e-5.

Regenerate after an intended change (and say why in the commit):
    python tests/adapters/test_golden_curve.py --write
"""

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = ROOT / "tests" / "golden" / "torch_parity_losses.json"
TOLERANCE = 1e-5


def run_reference(results: Path) -> tuple[list[float], str]:
    """Losses of the torch reference on harness/suites/parity.yaml, and the model's weights checksum."""
    import yaml

    from harness.cli import main
    from harness.results.store import load_records

    spec = yaml.safe_load((ROOT / "harness" / "suites" / "parity.yaml").read_text())
    suite = results.parent / "golden-suite.yaml"
    suite.write_text(yaml.safe_dump({"name": "golden", "defaults": {**spec, "framework": "torch"}}))
    assert main(["run", str(suite), "--results", str(results)]) == 0
    (record,) = load_records(results)
    return [s["loss"] for s in record["train"]["steps"]], record["env"]["model"]["checksum"]


@pytest.mark.integration
def test_torch_reference_reproduces_the_stored_loss_curve(tmp_path):
    from harness.run.env import model_fingerprint
    from harness.tinymodel.build import tiny_checkpoint

    golden = json.loads(GOLDEN.read_text())
    current = model_fingerprint(tiny_checkpoint(), "tiny")["checksum"]
    if current != golden["model_checksum"]:
        pytest.skip("the tiny checkpoint is not the one the curve was stored for (rebuilt locally?)")
    losses, _ = run_reference(tmp_path / "results")
    assert len(losses) == len(golden["losses"])
    worst = max(abs(a - b) for a, b in zip(losses, golden["losses"]))
    assert worst <= TOLERANCE, f"max |Δloss| {worst:.3g} against the stored curve"


if __name__ == "__main__" and "--write" in sys.argv:
    import tempfile

    sys.path.insert(0, str(ROOT))
    with tempfile.TemporaryDirectory() as tmp:
        losses, checksum = run_reference(Path(tmp) / "results")
    GOLDEN.write_text(json.dumps({"spec": "harness/suites/parity.yaml", "framework": "torch",
                                  "model_checksum": checksum, "losses": losses}, indent=1) + "\n")
    print(f"wrote {GOLDEN} ({len(losses)} losses)")
