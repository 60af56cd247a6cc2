"""Are the frameworks aligned? Run each for N steps and compare what they built and what they did.

Three pieces of evidence, all read back from the live runs (adapters.readback, adapters.trainer_steps):
1. the effective settings side by side (differences marked);
2. the initial LoRA tensors: same module set, and max |difference| per tensor (aligned = bit-identical);
3. the per-step loss: largest |Δloss| between any two frameworks, and the first step beyond tolerance.
`ablate` starts from aligned and reverts one factor at a time to each framework's native value
(peft gets PEFT's default, swift gets swift's), so a gap becomes a table of named causes.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from harness.config.native_defaults import FACTOR_NOTES, NATIVE_FACTORS, native_override
from harness.config.profiles import PROFILE_FACTORS
from harness.config.spec import make_spec, merge
from harness.dotted import get
from harness.errors import UserError
from harness.run.train_run import train
from harness.run_spec import Spec

# Settings that are framework-specific by nature: shown, never compared.
NOT_COMPARED_PREFIXES = ("swift.", "llamafactory.")
# When several settings differ, the first in this order is named as the cause.
CAUSE_ORDER = ("lora.n_targets", "lora.targets_sha", "lora.targets_vision", "lora.r", "lora.alpha", "lora.scaling",
               "lora.dropout", "lora.init_sha", "optim.group0.lr", "optim.group0.betas", "optim.group0.eps",
               "optim.group0.weight_decay", "lr_schedule", "warmup_steps", "lr_per_step_sha", "grad_accum",
               "global_batch", "loss_norm", "data_order_sha", "system_prompt", "label_mask", "grad_checkpointing",
               "precision", "dtype")

def run_one(spec: Spec, run_dir: Path, **train_kwargs) -> dict:
    """Train one framework in its own worker; returns its train.rank0.json (or raises UserError).
    `train_kwargs`: harness.run.train_run.train's (a lane's pinned launcher, the preparation lock)."""
    run = train(spec, run_dir, **train_kwargs)
    if run.result.status != "ok":
        last = (run.result.error_tail or "").strip().splitlines()[-1:]
        raise UserError(f"{spec.framework} run {run.result.status}: {last} (log: {run_dir / 'worker.log'})")
    if mismatch := run.world_mismatch():
        raise UserError(f"{spec.framework}: {mismatch} (log: {run_dir / 'worker.log'})")
    return {**run.rank0, "job": run.job}


def compare_runs(runs: dict[str, dict], tolerance: float) -> dict:
    """The parity verdict for runs {framework: train.rank0.json}."""
    from safetensors.torch import load_file

    names = list(runs)
    keys = sorted(set().union(*(r["effective"] for r in runs.values())))
    settings = []
    for key in keys:
        values = {n: runs[n]["effective"].get(key) for n in names}
        compared = not key.startswith(NOT_COMPARED_PREFIXES)
        distinct = {json.dumps(v, sort_keys=True) for v in values.values()}
        settings.append({"setting": key, "values": values, "differs": compared and len(distinct) > 1})

    tensors = {n: load_file(runs[n]["initial_adapter"]) for n in names}
    ref = names[0]
    adapters = {"modules_equal": True, "max_abs_diff": 0.0, "per_tensor": []}
    for n in names[1:]:
        a, b = tensors[ref], tensors[n]
        if set(a) != set(b):
            adapters["modules_equal"] = False
            adapters["only_in"] = {ref: sorted(set(a) - set(b))[:5], n: sorted(set(b) - set(a))[:5]}
        for k in sorted(set(a) & set(b)):
            same_shape = a[k].shape == b[k].shape and a[k].numel() > 0
            d = float((a[k] - b[k]).abs().max()) if same_shape else math.inf
            adapters["per_tensor"].append({"tensor": k, "pair": f"{ref}-{n}", "max_abs_diff": d})
            adapters["max_abs_diff"] = max(adapters["max_abs_diff"], d)

    losses = {n: [s["loss"] for s in runs[n]["steps"]] for n in names}
    n_steps = min(len(v) for v in losses.values())
    per_step, first_bad, max_d = [], None, 0.0
    for i in range(n_steps):
        vals = [losses[n][i] for n in names]
        d = max(vals) - min(vals)
        per_step.append({"step": i + 1, **{n: losses[n][i] for n in names}, "max_abs_dloss": d})
        max_d = max(max_d, d)
        if d > tolerance and first_bad is None:
            first_bad = i + 1
    diffs = [s["setting"] for s in settings if s["differs"]]
    cause = None
    if not adapters["modules_equal"]:
        cause = "the LoRA target modules differ"
    elif diffs:
        ordered = sorted(diffs, key=lambda k: CAUSE_ORDER.index(k) if k in CAUSE_ORDER else len(CAUSE_ORDER))
        cause = f"setting {ordered[0]!r} differs: " + ", ".join(
            f"{n}={runs[n]['effective'].get(ordered[0])}" for n in names)
    elif adapters["max_abs_diff"] > 0:
        cause = f"initial LoRA tensors differ (max |Δ| {adapters['max_abs_diff']:.3g}): random state at init"
    elif first_bad is not None:
        dropout = runs[names[0]]["effective"].get("lora.dropout") or 0
        if dropout:
            # Dropout masks come from torch's global RNG; the Trainer's data loader draws from it
            # too (iterator seeds) and the plain reference loop does not, so masks drift apart.
            cause = (f"loss diverges at step {first_bad} with identical settings: lora.dropout {dropout} draws "
                     "its masks from the global RNG, which the training loops consume differently")
        else:
            cause = f"loss diverges at step {first_bad} with identical settings (numerics)"
    # a setting read back different is a misalignment even while the losses still agree (an lr that
    # differs leaves the first step's loss untouched: it only moves the steps after it)
    aligned = (adapters["modules_equal"] and adapters["max_abs_diff"] == 0.0 and first_bad is None
               and not diffs and n_steps == max(len(v) for v in losses.values()))
    return {"frameworks": names, "tolerance": tolerance, "aligned": aligned, "cause": cause,
            "settings_diff": settings, "initial_adapter": adapters, "steps": per_step,
            "max_abs_dloss": max_d, "first_divergent_step": first_bad,
            "final_loss": {n: losses[n][-1] if losses[n] else None for n in names}}


def parity(base: Spec, frameworks: list[str], out_dir: Path, tolerance: float, progress=print) -> dict:
    runs = {}
    for fw in frameworks:
        spec = make_spec(base, {"framework": fw})
        progress(f"parity: training {fw} for {spec.train.steps} steps ...")
        runs[fw] = run_one(spec, out_dir / fw)
    return compare_runs(runs, tolerance)


def ablate(base: Spec, out_dir: Path, tolerance: float, factors=None, progress=print) -> list[dict]:
    """For each factor: peft and swift aligned except that factor at each one's native value."""
    rows = []
    for factor in factors or NATIVE_FACTORS:
        if factor not in NATIVE_FACTORS:
            raise UserError(f"unknown ablation factor {factor!r} (valid: {', '.join(NATIVE_FACTORS)})")
        runs = {}
        for fw in ("peft", "swift"):
            override = native_override(factor, fw, make_spec(base))
            spec = make_spec(merge(make_spec(base), override), {"framework": fw, "alignment": "aligned"})
            progress(f"ablation {factor}: {fw} ...")
            runs[fw] = run_one(spec, out_dir / factor / fw)
        verdict = compare_runs(runs, tolerance)
        rows.append({"factor": factor, "max_abs_dloss": verdict["max_abs_dloss"],
                     "final_loss_gap": abs(verdict["final_loss"]["peft"] - verdict["final_loss"]["swift"]),
                     "first_divergent_step": verdict["first_divergent_step"],
                     "values": {fw: _factor_value(factor, runs[fw]) for fw in runs},
                     "note": FACTOR_NOTES.get(factor, "")})
    return sorted(rows, key=lambda r: -r["max_abs_dloss"])


def _override(keys: tuple[str, ...], source: Spec) -> dict:
    out: dict = {}
    for dotted in keys:
        section, key = dotted.split(".")
        out.setdefault(section, {})[key] = get(source.to_dict(), dotted)
    return out


def profile_label(name: str) -> str:
    """How a profile is named in tables: a shipped profile by its name, a recipe file by its stem."""
    from harness.config.profiles import PROFILES

    return name if name in PROFILES else Path(name).stem


def resolve_profile(base: Spec, name: str) -> tuple[str, Spec]:
    """(framework, spec) of a shipped profile, or of a user's recipe: a YAML file of spec overrides.

    A recipe file may start from a shipped profile (`alignment: swift-default`) and override any key
    on top of it; its `framework` is the one it runs on (default: the profile's, else the spec's).
    Everything it does not set stays the spec's (model, data, steps, seeds, evaluation)."""
    from harness.config.profiles import HOME_FRAMEWORK, PROFILES
    from harness.config.spec import load_yaml

    if name in PROFILES:
        return HOME_FRAMEWORK[name], make_spec(base, {"alignment": name, "framework": HOME_FRAMEWORK[name]})
    if Path(name).suffix not in (".yaml", ".yml"):
        raise UserError(f"unknown profile {name!r} (valid: {', '.join(PROFILES)}, or a YAML file of spec overrides)")
    overrides = load_yaml(name)
    start = overrides.pop("alignment", "aligned")
    if start != "aligned" and start not in PROFILES:
        raise UserError(f"{name}: alignment must be aligned or a profile ({', '.join(PROFILES)}), got {start!r}")
    framework = overrides.pop("framework", None) or HOME_FRAMEWORK.get(start) or base.framework
    spec = make_spec(base, {"alignment": start, "framework": framework}, source=name)
    # the profile's values first, the file's on top; "aligned": every value explicit from here on
    return framework, make_spec(merge(spec, overrides, source=name), {"alignment": "aligned"}, source=name)


def profile_arms(base: Spec, first: str, second: str) -> tuple[str, Spec, list[dict], list[dict]]:
    """The runs that say why profile `first` trains differently from `second`: (first's home framework,
    first's spec, one arm per factor in which they differ, the whole-second-recipe arms).

    Each arm is {"factor", "values", "spec"}, or {"factor", "values", "error"} when the framework cannot
    take the setting (e.g. labels on every token in swift). The whole recipe runs on its own framework,
    and on first's too when that differs (the difference between the two is the framework's share)."""
    home, spec_a = resolve_profile(base, first)
    home_b, spec_b = resolve_profile(base, second)
    label_a, label_b = profile_label(first), profile_label(second)
    if label_a == label_b:
        raise UserError(f"--profiles: both are named {label_a!r}; compare two different recipes")
    factors: list[dict] = []
    for factor, keys in PROFILE_FACTORS.items():
        if all(get(spec_a, k) == get(spec_b, k) for k in keys):
            continue
        values = {label_a: [get(spec_a, k) for k in keys], label_b: [get(spec_b, k) for k in keys]}
        try:
            spec = make_spec(merge(spec_a, _override(keys, spec_b)), {"alignment": "aligned", "framework": home})
        except UserError as exc:
            factors.append({"factor": factor, "values": values, "error": f"not expressible on {home}: {exc}"})
            continue
        factors.append({"factor": factor, "values": values, "spec": spec})
    wholes: list[dict] = [{"factor": f"{label_b} on {home_b}", "values": None, "spec": spec_b}]
    if home_b != home:
        label = f"{label_b} on {home}"
        try:
            wholes.append({"factor": label, "values": None, "spec": make_spec(spec_b, {"framework": home})})
        except UserError as exc:
            wholes.append({"factor": label, "values": None, "error": f"not expressible on {home}: {exc}"})
    return home, spec_a, factors, wholes


def ablate_profiles(base: Spec, first: str, second: str, out_dir: Path, progress=print) -> dict:
    """Why two named profiles train differently, step by step: `first` on its own framework, then
    `first` with one factor at a time set to `second`'s value, ranked by how far that factor alone
    moves the per-step training loss; and `second` on its own framework and on `first`'s (the
    framework's share, ~0 when aligned).

    The per-step gap over a few steps is an alignment tool: it shows which factor makes two runs
    part ways, and it also moves with which samples each step happened to see. It does not measure
    what a recipe ends up learning: harness.analysis.outcome_ablation does that.
    Runs whose settings the framework cannot take are rows with the reason instead of numbers."""
    home, spec_a, factor_arms, wholes = profile_arms(base, first, second)
    first, second = profile_label(first), profile_label(second)
    progress(f"profile {first} on {home} ...")
    run_a = run_one(spec_a, out_dir / first)
    losses_a = [s["loss"] for s in run_a["steps"]]

    def compare(arm: dict) -> dict:
        label = arm["factor"]
        row = {"factor": label, "values": arm["values"]}
        if "error" in arm:
            return {**row, "error": arm["error"]}
        spec = arm["spec"]
        progress(f"ablation {label}: {spec.framework} ...")
        try:
            run = run_one(spec, out_dir / label.replace(" ", "_"))
        except UserError as exc:
            return {**row, "error": str(exc)}
        losses = [s["loss"] for s in run["steps"]]
        n = min(len(losses), len(losses_a))
        return {**row, "max_abs_dloss": max((abs(losses[i] - losses_a[i]) for i in range(n)), default=0.0),
                "final_loss": losses[-1] if losses else None, "final_loss_gap": losses[-1] - losses_a[-1]}

    rows = [compare(arm) for arm in factor_arms]
    ranked = sorted(rows, key=lambda r: -(r.get("max_abs_dloss") if r.get("max_abs_dloss") is not None else -1))
    totals = [compare(arm) for arm in wholes]
    return {"first": first, "second": second, "framework": home, "steps": spec_a.train.steps,
            "measures": "largest per-step gap in training loss (an alignment tool, not an outcome ranking)",
            "first_final_loss": losses_a[-1] if losses_a else None, "factors": ranked, "totals": totals}


def accumulation_splits(global_batch: int) -> list[tuple[int, int]]:
    """Every (micro-batch, accumulation steps) whose product is the global batch, largest micro-batch first."""
    return [(b, global_batch // b) for b in range(global_batch, 0, -1) if global_batch % b == 0]


MULTI_PROCESS_FRAMEWORKS = ("peft", "swift")  # the torch reference loop runs one process


def world_splits(global_batch: int, framework: str, world_sizes: tuple[int, ...]) -> list[tuple[int, int, int]]:
    """(micro-batch, accumulation, processes) with one process at each accumulation, then the same
    global batch over several processes without accumulation (for frameworks that run several)."""
    splits = [(b, a, 1) for b, a in accumulation_splits(global_batch)]
    if framework in MULTI_PROCESS_FRAMEWORKS:
        splits += [(global_batch // w, 1, w) for w in world_sizes if w > 1 and global_batch % w == 0]
    return splits


def split_name(batch: int, accum: int, world: int) -> str:
    return f"{batch}x{accum}" + (f" x{world}p" if world > 1 else "")


def check_accumulation(base: Spec, frameworks: list[str], out_dir: Path, tolerance: float, progress=print,
                       world_sizes: tuple[int, ...] = (2,)) -> dict:
    """Train each framework with the same global batch split several ways; the losses must not move.

    A loss normalised per micro-batch (the mean of micro-batch means) changes with the split as
    soon as samples differ in length, which the extraction targets do; a loss normalised per token
    over the whole accumulated batch does not. The sampler's order is the same permutation for every
    split, so each optimizer step sees the same samples. `world_sizes`: the global batch is also run
    over that many processes with no accumulation (one process x accumulation 2 against 2 processes
    x accumulation 1); the per-step loss of such a run is the mean over its ranks.
    """
    global_batch = base.train.batch_size * base.train.grad_accum
    if len(accumulation_splits(global_batch)) < 2:
        raise UserError(f"global batch {global_batch} has a single split: use a batch x accumulation of 2 or more")
    results = []
    for fw in frameworks:
        losses = {}
        for batch, accum, world in world_splits(global_batch, fw, world_sizes):
            spec = make_spec(base, {"framework": fw, "train": {"batch_size": batch, "grad_accum": accum},
                                    "distributed": {"world_size": world}})
            name = split_name(batch, accum, world)
            progress(f"accumulation: {fw} {name} ...")
            run = run_one(spec, out_dir / "accumulation" / f"{fw}-{name.replace(' ', '-')}")
            losses[name] = [st["loss"] for st in run["steps"]]
        reference = next(iter(losses))
        for split, values in losses.items():
            gap = max((abs(a - b) for a, b in zip(values, losses[reference])), default=0.0)
            results.append({"framework": fw, "split": split, "reference": reference, "max_abs_dloss": gap,
                            "invariant": gap <= tolerance, "losses": values})
    bad = [r for r in results if not r["invariant"]]
    return {"check": "accumulation", "global_batch": global_batch, "tolerance": tolerance,
            "alignment": base.alignment, "loss_norm": base.train.loss_norm, "rows": results,
            "invariant": not bad,
            "cause": None if not bad else (f"{bad[0]['framework']}: split {bad[0]['split']} differs from "
                                           f"{bad[0]['reference']} by {bad[0]['max_abs_dloss']:.3g} in loss")}


def _factor_value(factor: str, run: dict):
    """What the factor was set to in this run, for the table (from the spec the worker ran)."""
    spec = run["job"].spec
    section, values = next(iter(NATIVE_FACTORS[factor][spec.framework].items()))
    return {k: get(spec, f"{section}.{k}") for k in values}
