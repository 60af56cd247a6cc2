"""`lorabench parity SPEC.yaml`: prove frameworks aligned (exit 0) or name why not (exit 1)."""

from __future__ import annotations

import json
import time
from pathlib import Path

from harness.config.profiles import factor_setting
from harness.errors import UserError
from harness.run_spec import Spec


def add_parser(parser) -> None:
    parser.add_argument("spec", help="a run spec YAML (e.g. harness/suites/parity.yaml)")
    parser.add_argument("--steps", type=int, help="optimizer steps per framework (default: the spec's)")
    parser.add_argument("--frameworks", default="peft,swift,torch", help="comma-separated (default: peft,swift,torch)")
    parser.add_argument("--tolerance", type=float,
                        help="max |Δloss| per step (default 1e-4; 1e-5 for --check accumulation)")
    parser.add_argument("--check", choices=["accumulation"],
                        help="accumulation: the same global batch split several ways must give the same losses")
    parser.add_argument("--processes", type=int, default=2, metavar="N",
                        help="with --check accumulation: also run the global batch over N processes without "
                             "accumulation, for peft and swift (default 2; 1 skips it)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a spec key, e.g. --set lora.r=16 --set alignment=native")
    parser.add_argument("--ablate", action="store_true", help="revert one factor at a time to native values")
    parser.add_argument("--factors", help="comma-separated subset of ablation factors")
    parser.add_argument("--profiles", metavar="A,B",
                        help="with --ablate: rank the factors that make profile A train differently from B; each a "
                             "shipped profile (e.g. swift-default,minicpmv-official) or a YAML file of spec overrides "
                             "(a user's recipe; `alignment: <profile>` in it starts from that profile)")
    parser.add_argument("--outcome", action="store_true",
                        help="with --ablate --profiles: train every arm for the spec's full steps under each data "
                             "seed and rank the factors by their effect on the held-out result (loss, field F1, "
                             "ANLS, CER), against a noise floor from the spread between seeds")
    parser.add_argument("--seeds", default="0,1", metavar="S,S",
                        help="with --outcome: the data seeds (train.data_seed) every arm runs under (default 0,1)")
    parser.add_argument("--budget", choices=["samples", "steps"], default="samples",
                        help="with --outcome: samples (default): every arm sees the samples the first profile sees "
                             "in the spec's steps (a smaller global batch takes more steps); steps: every arm runs "
                             "the spec's steps")
    parser.add_argument("--lanes", metavar="N|auto", default="auto",
                        help="with --outcome: arm runs at a time, each pinned to its own cores (default auto: one "
                             "per core for one-process CPU runs, as `lorabench run` does)")
    parser.add_argument("--resume", action="store_true",
                        help="with --outcome: reuse every arm run that an earlier, interrupted ablation in --out "
                             "already trained and scored under the same spec (and, with --records, every arm "
                             "whose record there was made on the same model and dataset builds and releases)")
    parser.add_argument("--records", type=Path, metavar="DIR",
                        help="with --outcome: also keep each finished arm run's record (outcome, spec, commit, "
                             "releases; a small JSON named by the spec's hash) in DIR, to commit or copy, so that "
                             "--resume can go on in another clone or on another machine")
    parser.add_argument("--out", type=Path, default=Path("results/runs/parity"), help="where runs and parity.json go")
    parser.add_argument("--json", action="store_true", help="print the verdict as JSON")


def run(args) -> int:
    from harness.config.spec import load_yaml, make_spec, merge, parse_set

    raw = merge(make_spec(load_yaml(args.spec), source=args.spec), parse_set(args.set), source="--set")
    base = make_spec(raw, {"train": {"steps": args.steps}} if args.steps else {}, source=args.spec)
    frameworks = [f.strip() for f in args.frameworks.split(",") if f.strip()]
    for fw in frameworks:
        make_spec(base, {"framework": fw}, source="--frameworks")  # an unknown name: the spec's own error
    if len(frameworks) < 2 and not (args.ablate or args.check):
        raise UserError("parity needs at least two frameworks")
    from harness.run.dir_lock import hold

    with hold(args.out):  # one run at a time on a directory (it also creates it)
        return _run_held(args, base, frameworks)


def _run_held(args, base: Spec, frameworks: list[str]) -> int:
    from harness.analysis import parity as P

    quiet = (lambda *_: None) if args.json else (lambda m: print(m, flush=True))
    t0 = time.perf_counter()
    if args.check == "accumulation":
        tolerance = 1e-5 if args.tolerance is None else args.tolerance
        doc = P.check_accumulation(base, frameworks, args.out, tolerance, progress=quiet,
                                   world_sizes=(args.processes,))
        doc["seconds"] = time.perf_counter() - t0
        _save(args.out / "accumulation.json", doc)
        print(json.dumps(doc, default=str) if args.json else format_accumulation(doc))
        return 0 if doc["invariant"] else 1
    args.tolerance = 1e-4 if args.tolerance is None else args.tolerance
    if args.profiles and not args.ablate:
        raise UserError("--profiles goes with --ablate")
    if args.outcome and not (args.ablate and args.profiles):
        raise UserError("--outcome goes with --ablate --profiles A,B")
    if args.ablate and args.profiles:
        names = [n.strip() for n in args.profiles.split(",") if n.strip()]
        if len(names) != 2:
            raise UserError(f"--profiles takes two profiles (names or YAML files), got {args.profiles!r}")
        if args.outcome:
            return _run_outcome(args, base, names, quiet, t0)
        pair = pair_name(names)
        doc = P.ablate_profiles(base, names[0], names[1], args.out / "profiles" / pair, progress=quiet)
        doc["seconds"] = time.perf_counter() - t0
        _save(args.out / f"profile_ablation.{pair}.json", doc)
        print(json.dumps(doc, default=str) if args.json else format_profile_ablation(doc))
        return 0
    if args.ablate:
        factors = args.factors.split(",") if args.factors else None
        rows = P.ablate(base, args.out / "ablation", args.tolerance, factors, progress=quiet)
        doc = {"ablation": rows, "seconds": time.perf_counter() - t0, "spec": base.to_dict()}
        _save(args.out / "ablation.json", doc)
        print(json.dumps(doc, default=str) if args.json else format_ablation(rows))
        return 0
    verdict = P.parity(base, frameworks, args.out, args.tolerance, progress=quiet)
    verdict["seconds"] = time.perf_counter() - t0
    verdict["spec"] = base.to_dict()
    _save(args.out / "parity.json", verdict)
    print(json.dumps(verdict, default=str) if args.json else format_verdict(verdict))
    return 0 if verdict["aligned"] else 1


def _run_outcome(args, base: Spec, names: list[str], quiet, t0: float) -> int:
    from harness.analysis.outcome_ablation import ablate_outcome
    from harness.commands.outcome_table import format_outcome_ablation

    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        raise UserError(f"--seeds takes comma-separated integers, got {args.seeds!r}") from None
    from harness.config.suite import parse_lanes

    lanes = parse_lanes(args.lanes, "--lanes")
    pair = pair_name(names)
    doc = ablate_outcome(base, names[0], names[1], seeds, args.out / "outcome" / pair, progress=quiet,
                         budget=args.budget, lanes=lanes, resume=args.resume, records=args.records)
    doc["seconds"] = time.perf_counter() - t0
    doc["spec"] = base.to_dict()
    _save(args.out / f"outcome_ablation.{pair}.json", doc)
    print(json.dumps(doc, default=str) if args.json else format_outcome_ablation(doc))
    return 0


def pair_name(names: list[str]) -> str:
    """`A-vs-B`: the file and work-dir name of one pair's ablation, so that a second pair ablated into
    the same --out sits beside the first instead of replacing it."""
    from harness.analysis.parity import profile_label

    return "-vs-".join(profile_label(n) for n in names)


def _save(path: Path, doc: dict) -> None:
    from harness.results.store import write_json_atomic

    write_json_atomic(path, doc)


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v) if not isinstance(v, (list, dict)) else json.dumps(v)


def format_verdict(v: dict) -> str:
    names = v["frameworks"]
    out = ["Effective settings (read back from the live objects; * = differs)", ""]
    width = max(len(s["setting"]) for s in v["settings_diff"]) + 2
    out.append(" " * (width + 2) + "".join(f"{n:<22}" for n in names))
    for s in v["settings_diff"]:
        mark = "*" if s["differs"] else " "
        out.append(f"{mark} {s['setting']:<{width}}" + "".join(f"{_fmt(s['values'][n])[:21]:<22}" for n in names))
    a = v["initial_adapter"]
    out += ["", f"Initial LoRA adapters: modules {'identical' if a['modules_equal'] else 'DIFFER'}; "
                f"{len(a['per_tensor'])} tensor pairs, max |Δ| = {a['max_abs_diff']:.3g}"]
    out += ["", "step  " + "".join(f"{n:>14}" for n in names) + "      max|Δloss|"]
    for s in v["steps"]:
        out.append(f"{s['step']:>4}  " + "".join(f"{s[n]:>14.7f}" for n in names) + f"   {s['max_abs_dloss']:.2e}")
    out += ["", f"largest |Δloss| {v['max_abs_dloss']:.3g} (tolerance {v['tolerance']:g}); first divergent step: "
                f"{v['first_divergent_step'] or 'none'}; {v['seconds']:.0f} s"]
    out.append("ALIGNED" if v["aligned"] else f"NOT ALIGNED: {v['cause']}")
    return "\n".join(out)


def format_accumulation(doc: dict) -> str:
    out = [f"Accumulation invariance: global batch {doc['global_batch']} split as micro-batch x accumulation "
           f"({doc['alignment']}, loss normalised by {doc['loss_norm']}); \"x2p\": over 2 processes", "",
           f"{'framework':<10}{'split':>12}{'vs':>8}{'max |Δloss|':>14}  verdict"]
    for r in doc["rows"]:
        out.append(f"{r['framework']:<10}{r['split']:>12}{r['reference']:>8}{r['max_abs_dloss']:>14.3g}  "
                   f"{'same' if r['invariant'] else 'DIFFERS'}")
    out += ["", "INVARIANT" if doc["invariant"] else f"NOT INVARIANT: {doc['cause']} (tolerance {doc['tolerance']:g})"]
    return "\n".join(out)


def format_ablation(rows: list[dict]) -> str:
    out = ["Ablation: aligned, with one factor at each framework's native value (largest gap first)",
           "Measures the per-step training-loss gap over a few steps: an alignment tool that finds which setting "
           "makes two runs part ways, not a ranking of what changes the fine-tuned result.", "",
           f"{'factor':<20}{'max |Δloss|':>14}{'final gap':>12}  peft / swift value"]
    for r in rows:
        vals = " / ".join(json.dumps(r["values"].get(fw)) for fw in ("peft", "swift"))
        out.append(f"{r['factor']:<20}{r['max_abs_dloss']:>14.3g}{r['final_loss_gap']:>12.3g}  {vals}")
        if r["note"]:
            out.append(f"{'':<20}  note: {r['note']}")
    return "\n".join(out)


def format_profile_ablation(doc: dict) -> str:
    a, b = doc["first"], doc["second"]
    out = [f"Why {a} and {b} train differently: {a} on {doc['framework']} ({doc['steps']} steps, final loss "
           f"{_fmt(doc['first_final_loss'])}), with one factor at a time set to {b}'s value; largest effect first",
           "Measures the per-step training-loss gap: an alignment tool (it also moves with which samples each step "
           "saw), not a ranking of what changes the result; --outcome ranks by the held-out result.", "",
           f"{'factor':<26}{'max |Δloss|':>13}{'final Δ':>11}  {a} -> {b}"]
    for r in doc["factors"]:
        values = f"{factor_setting(r['factor'], r['values'][a])} -> {factor_setting(r['factor'], r['values'][b])}"
        if "error" in r:
            out.append(f"{r['factor']:<26}{'—':>13}{'—':>11}  {values}  ({r['error']})")
        else:
            out.append(f"{r['factor']:<26}{r['max_abs_dloss']:>13.3g}{r['final_loss_gap']:>+11.3g}  {values}")
    out += ["", "All of the second profile at once:"]
    for r in doc["totals"]:
        if "error" in r:
            out.append(f"  {r['factor']:<34} ({r['error']})")
        else:
            out.append(f"  {r['factor']:<34} max |Δloss| {r['max_abs_dloss']:.3g}, final Δ {r['final_loss_gap']:+.3g}")
    return "\n".join(out)
