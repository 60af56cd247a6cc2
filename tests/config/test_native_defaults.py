"""One copy of each framework's native defaults, checked against the framework that defines them."""

import json
import subprocess
import sys

import pytest

from harness.config.native_defaults import NATIVE_FACTORS, native_override, swift_grad_accum
from harness.config.spec import make_spec

# (per-device batch, processes): one process and three, as a user of 3 x 24 GiB cards runs it
CASES = [(b, w) for w in (1, 3) for b in (1, 2, 3, 4, 5, 8, 16, 17)]

ASK_SWIFT = """
import json, sys, tempfile
import swift.trainers.arguments as arguments
from swift.trainers.arguments import TrainingArguments
out = []
for batch, world in json.loads(sys.argv[1]):
    arguments.get_dist_setting = lambda world=world: (0, 0, world, world)  # rank, local rank, world, local world
    args = TrainingArguments(output_dir=tempfile.mkdtemp(), per_device_train_batch_size=batch, use_cpu=True,
                             report_to=[])
    out.append([batch, world, args.gradient_accumulation_steps])
print(json.dumps(out))
"""


@pytest.mark.integration
def test_swift_accumulation_rule_is_the_installed_ms_swifts():
    """ms-swift picks the accumulation itself when none is given; ours must be its rule, for one
    process and for three (swift imports in its own process: it patches transformers globally)."""
    pytest.importorskip("swift")
    done = subprocess.run([sys.executable, "-c", ASK_SWIFT, json.dumps(CASES)], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    swift_says = json.loads(done.stdout.strip().splitlines()[-1])
    assert [[b, w, swift_grad_accum(b, w)] for b, w in CASES] == swift_says
    assert {w: swift_grad_accum(4, w) for w in (1, 3)} == {1: 4, 3: 2}  # not ceil(16 / 4) for every world


def test_the_profile_and_the_ablation_read_the_same_rule():
    for world in (1, 3):
        spec = make_spec({"distributed": {"world_size": world}, "train": {"batch_size": 4}})
        ablated = native_override("accumulation", "swift", spec)["train"]["grad_accum"]
        profile = make_spec({"alignment": "swift-default", "framework": "swift",
                             "distributed": {"world_size": world}})
        assert ablated == swift_grad_accum(4, world)
        assert profile.train.grad_accum == swift_grad_accum(profile.train.batch_size, world)
    assert native_override("accumulation", "peft", make_spec())["train"]["grad_accum"] == 1


def test_every_factor_has_both_frameworks_values():
    assert all(set(values) == {"peft", "swift"} for values in NATIVE_FACTORS.values())
