"""What changed between releases: each release set's cells against the same cells under the pinned set.

A suite whose cells set `env` (harness/suites/versions.yaml) trains one cell under several release
sets; the records name the set their train worker ran in (`env.environment`). The section appears
when the records carry more than one. For every cell (its keys without `env` and `seed`) and every
set other than the main environment's, against that cell's runs in the main environment:

- the releases that differ, as the train worker saw them (harness.results.store.training_releases);
- per-step loss, seed against seed: max |Δloss| and the first step beyond LOSS_TOLERANCE, where the
  two departed (an aligned cell should agree; a native one may not, when a default moved);
- field F1, CER, memory and samples/s as ratios against the pinned set, with the regress verdict
  (threshold AND noise, harness.analysis.regress.compare_metric: "same" is within both);
- the cross-release round trip: the adapter the set's peft saved, loaded by the main environment's
  peft and ms-swift (harness.run.roundtrip), logits compared and every saved key accounted for;
- and, in a second table, every setting that differs from the pinned run's: read back from the live
  objects (effective settings), and the framework's own resolved arguments (the run's
  training_args.json or sft_args.json, `train.framework_args`), where a default that moved between
  releases, or a field a release added or dropped, shows.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence

from harness.analysis.cell_names import cell_label
from harness.analysis.regress import compare_metric
from harness.analysis.report.model import Table, TableCell, fmt_number, runs_cell
from harness.analysis.report.tables import memory_metric
from harness.results.metric_table import DEFAULT_THRESHOLDS
from harness.results.store import (MAIN_ENVIRONMENT, cell_keys, resolve_sidecar, training_environment,
                                   training_releases)

LOSS_TOLERANCE = 1e-5  # what the parity check calls aligned (fp32 on the CPU)
PINNED = "pinned"  # how the main environment is named in this section


def environments(records: Sequence[Mapping]) -> list[str]:
    """The sets the records' train workers ran in, the main environment first."""
    names = sorted({training_environment(r.get("env")) for r in records})
    return sorted(names, key=lambda n: (n != MAIN_ENVIRONMENT, n))


def _by_cell(records: Sequence[Mapping]) -> dict[str, dict[str, list[Mapping]]]:
    """cell label (without env and seed) -> environment -> records."""
    keys = cell_keys(records, ignore=("seed", "env"))
    out: dict[str, dict[str, list[Mapping]]] = {}
    for r in records:
        label = cell_label({k: (r.get("cell") or {}).get(k) for k in keys})
        out.setdefault(label, {}).setdefault(training_environment(r.get("env")), []).append(r)
    return dict(sorted(out.items()))


def released(pinned: Sequence[Mapping], other: Sequence[Mapping]) -> str:
    """`peft 0.20.0 → 0.21.2` for each package the two sets' train workers saw in another version."""
    a, b = training_releases(pinned[0].get("env")), training_releases(other[0].get("env"))
    changed = [f"{name} {a.get(name)} → {b.get(name)}" for name in sorted(set(a) | set(b))
               if a.get(name) != b.get(name)]
    return ", ".join(changed) or "—"


def loss_departure(pinned: Sequence[Mapping], other: Sequence[Mapping],
                   tolerance: float = LOSS_TOLERANCE) -> tuple[float | None, int | None]:
    """(max |Δloss| over the steps both logged, the first step beyond `tolerance`), seed against seed
    over the ok runs of both sets; (None, None) when no seed ran ok in both."""
    def curves(records):
        return {r["cell"].get("seed"): {s["step"]: s["loss"] for s in (r.get("train") or {}).get("steps") or []
                                        if s.get("loss") is not None}
                for r in records if r.get("status") == "ok"}

    a, b = curves(pinned), curves(other)
    worst, first = None, None
    for seed in sorted(set(a) & set(b), key=str):
        common = sorted(set(a[seed]) & set(b[seed]))
        for step in common:
            delta = abs(a[seed][step] - b[seed][step])
            worst = delta if worst is None else max(worst, delta)
            if delta > tolerance and (first is None or step < first):
                first = step
    return worst, first


def _ratio_cell(metric: str, pinned: Sequence[Mapping], other: Sequence[Mapping]) -> TableCell:
    ok_a = [r for r in pinned if r.get("status") == "ok"]
    ok_b = [r for r in other if r.get("status") == "ok"]
    row = compare_metric(metric, ok_a, ok_b, DEFAULT_THRESHOLDS.get(metric, ("rel", 0.1)))
    if row is None or row["current"] is None:
        return TableCell("—")
    # a ratio against 0 (field F1 of a barely trained model) says nothing: the difference then
    shown = f"{row['ratio']:.3f}×" if row["ratio"] is not None else f"Δ {row['delta']:+.3f}"
    return TableCell(f"{shown} {row['verdict']}", bold=row["verdict"] == "worse")


def roundtrip_text(records: Sequence[Mapping]) -> tuple[str, list[str]]:
    """("1/1 · peft 0.21.2 → 0.20.0", [failure causes]): runs whose adapter, saved by the set's peft,
    the main environment's loaders reloaded exactly."""
    checked = [r["roundtrip"] for r in records if (r.get("roundtrip") or {}).get("ok") is not None]
    if not checked:
        return "—", []
    passed = sum(bool(b["ok"]) for b in checked)
    saved = next((b.get("saved_by_peft") for b in checked if b.get("saved_by_peft")), None)
    loaders = [ld.get("releases", {}).get("loaded_by", {}).get("peft") for b in checked
               for ld in (b.get("loaders") or {}).values()]
    loaded = next((v for v in loaders if v), None)
    # newer peft writes its version into adapter_config.json; 0.14 does not
    text = f"{passed}/{len(checked)}" + (f" · peft {saved or '(unrecorded)'} → {loaded}" if loaded else "")
    return text, [b["cause"] for b in checked if not b["ok"] and b.get("cause")]


READ_BACK = "read back"


def settings_diff(pinned: Sequence[Mapping], other: Sequence[Mapping]) -> list[tuple[str, str, object, object]]:
    """(where, setting, pinned value, this set's value) for every setting that differs between the first
    ok run of each (the same seed when there is one): the read-back settings, then the framework's
    resolved arguments (where = its file's name)."""
    ok_a = [r for r in pinned if r.get("status") == "ok"]
    ok_b = [r for r in other if r.get("status") == "ok"]
    if not ok_a or not ok_b:
        return []
    b = ok_b[0]
    a = next((r for r in ok_a if r["cell"].get("seed") == b["cell"].get("seed")), ok_a[0])
    out = [(READ_BACK, k, va, vb) for k, va, vb in _differ(a.get("effective_settings") or {},
                                                             b.get("effective_settings") or {})]
    args_a, args_b = framework_args(a), framework_args(b)
    if args_a is not None and args_b is not None:
        where = str(b["train"]["framework_args"]).rsplit("/", 1)[-1]  # training_args.json, sft_args.json
        out += [(where, k, va, vb) for k, va, vb in _differ(args_a, args_b)
                if not (_is_path(va) or _is_path(vb))]  # output and logging directories name the run
    return out


def framework_args(record: Mapping) -> dict | None:
    """The framework's own arguments as the run resolved them, when the run's work files are there."""
    path = resolve_sidecar(record, (record.get("train") or {}).get("framework_args"))
    try:
        return json.loads(path.read_text()) if path else None
    except (OSError, ValueError):
        return None


def _differ(a: Mapping, b: Mapping) -> list[tuple[str, object, object]]:
    return [(k, a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]


def _is_path(value) -> bool:
    if isinstance(value, list):
        return any(_is_path(v) for v in value)
    return isinstance(value, str) and "/" in value


def release_tables(records: Sequence[Mapping], number: int) -> list[Table]:
    """Tables `<number>a` (each set against the pinned one) and `<number>b` (settings that differ);
    none unless the records carry more than one environment."""
    envs = environments(records)
    if len(envs) < 2:
        return []
    memory = memory_metric(records)
    summary = Table("releases", f"Table {number}a. What changed between releases",
                    "", ["cell", "environment", "releases that differ", "ok runs", "max |Δloss|",
                         "departs at step", "field F1", "CER", "memory", "samples/s", "round trip"], label_cols=3)
    settings = Table("release-settings", f"Table {number}b. Settings that differ from the pinned set",
                     "Every setting whose value under the release set is not the pinned run's, first ok seed of "
                     f"each: '{READ_BACK}' from the live objects (effective settings), or the framework's own "
                     "arguments as it resolved them (its file: a default that moved, a field a release added or "
                     "dropped; directories, which name the run, left out). A dash: the setting does not exist there.",
                     ["cell", "environment", "from", "setting", PINNED, "this set"], label_cols=6)
    failures, unpaired = [], []
    for label, by_env in _by_cell(records).items():
        pinned = by_env.get(MAIN_ENVIRONMENT)
        for env in (e for e in envs if e != MAIN_ENVIRONMENT and e in by_env):
            other = by_env[env]
            if not pinned:
                unpaired.append(f"{label} under {env}")
                continue
            worst, first = loss_departure(pinned, other)
            trip, causes = roundtrip_text(other)
            failures += [f"{label} under {env}: {c}" for c in causes]
            summary.rows.append([TableCell(label), TableCell(env), TableCell(released(pinned, other)),
                                 runs_cell(other), TableCell(fmt_number(worst)),
                                 TableCell("—" if first is None else str(first), bold=first is not None),
                                 *(_ratio_cell(m, pinned, other) for m in ("field_f1", "cer", memory,
                                                                          "train_samples_per_s")),
                                 TableCell(trip, bold=bool(causes))])
            summary.row_runs.append([r["run_id"] for r in (*pinned, *other)])
            summary.row_labels.append(f"{label} under {env}")
            for where, setting, a, b in settings_diff(pinned, other):
                settings.rows.append([TableCell(label), TableCell(env), TableCell(where), TableCell(setting),
                                      TableCell(_value(a)), TableCell(_value(b))])
                settings.row_runs.append([r["run_id"] for r in (*pinned, *other)])
                settings.row_labels.append(f"{label} under {env}: {setting}")
    summary.caption = _caption(memory, failures, unpaired, bool(settings.rows))
    return [summary, settings] if settings.rows else [summary]


def _value(value) -> str:
    return "—" if value is None else str(value)


def _caption(memory: str, failures: list[str], unpaired: list[str], settings_differ: bool) -> str:
    text = (f"Each release set's cell against the same cell under the pinned set ({PINNED}: the main environment, "
            "constraints.txt). Releases: the versions the train worker saw that differ. max |Δloss|: per-step "
            f"training loss, seed against seed; departs at: the first step where |Δloss| > {LOSS_TOLERANCE:g} "
            "(bold; an aligned cell should not depart). Field F1, CER, memory "
            f"({memory}) and samples/s: this set's mean / the pinned mean, with the regress verdict (beyond its "
            "threshold and the noise; 'loaded': timed under load, not compared). Round trip: runs whose adapter, "
            "saved by this set's peft, the main environment's peft and ms-swift reloaded with the trained logits "
            "and every saved key loaded (peft that saved → peft that loaded).")
    if not settings_differ:
        text += " No setting differs from the pinned run's."
    if failures:
        text += " Round trip failed: " + "; ".join(failures) + "."
    if unpaired:
        text += " No pinned cell to compare with: " + ", ".join(unpaired) + "."
    return text
