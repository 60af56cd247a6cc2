"""Paper-style report from run records: report.md, tables.tex (booktabs), report.html, figures/.

Flow: `build_report(records, parity_docs)` computes every table as data (`Table` of `Cell`s, with the
run ids behind each row) plus the figure inputs and the methods facts; `write_report` draws the
figures and renders the same data three ways, so the Markdown, LaTeX and HTML can never disagree.

Statistics (stated again in each caption):
- Quality: mean over seeds ± the 95 % t-interval half-width when a cell has >= 2 ok seeds; with one
  seed, the record's bootstrap-over-samples 95 % interval `[lo, hi]`, marked †.
- Best value per column in bold (direction from results.METRIC_DIRECTION).
- `*`: the cell differs from the best cell at p < 0.05, paired bootstrap over test samples
  (harness.metrics.paired_bootstrap_pvalue), each cell's per-sample counts averaged over its seeds
  per sample id and paired by id. Needs the per-sample files; without them no marks, and the caption
  says so.
- Cost: median over ok seeds with the (min–max) range over seeds.
Failed runs are counted in every row ("2/3" ok), listed with their error line, and never dropped.
"""

from __future__ import annotations

import base64
import collections
import dataclasses
import html
import json
import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from harness.analysis import figures as figures
from harness.eval import metrics as quality
from harness.results import stats
from harness.results.stats import mean_t_interval
from harness.results.metric_table import COST_COLUMNS, METRIC_DIRECTION, QUALITY_COLUMNS
from harness.results.store import cell_keys, group_cells, metric_values, resolve_sidecar

SIGNIFICANCE_P = 0.05
N_BOOT = 1000
BOOT_SEED = 0
# ---------------------------------------------------------------------------------------------
# Data model: what every renderer draws from


@dataclasses.dataclass
class Cell:
    text: str
    bold: bool = False
    mark: str = ""  # "*" significance, "†" bootstrap interval


@dataclasses.dataclass
class Table:
    key: str  # short id, used for LaTeX labels and footnotes
    title: str
    caption: str
    header: list[str]
    rows: list[list[Cell]] = dataclasses.field(default_factory=list)
    row_runs: list[list[str]] = dataclasses.field(default_factory=list)  # run ids behind each row
    row_labels: list[str] = dataclasses.field(default_factory=list)
    label_cols: int = 1  # leading text columns (left-aligned); the rest are numbers


@dataclasses.dataclass
class Report:
    title: str
    tables: list[Table]
    methods: dict
    failed: list[dict]  # {"run_id", "cell", "status", "error"}
    status_counts: dict[str, int]
    figure_inputs: dict  # name -> kwargs for harness.figures
    figures: list[dict] = dataclasses.field(default_factory=list)  # {"name","title","png","pdf"}


def _fmt_quality(x: float) -> str:
    return f"{x:.4f}"


def _fmt_cost(x: float) -> str:
    ax = abs(x)
    if ax >= 100:
        return f"{x:.0f}"
    if ax >= 10:
        return f"{x:.1f}"
    if ax >= 1:
        return f"{x:.2f}"
    return f"{x:.4f}"


def _best_index(means: Sequence[float | None], metric: str) -> set[int]:
    valid = [(m, i) for i, m in enumerate(means) if m is not None]
    if not valid:
        return set()
    pick = max if METRIC_DIRECTION.get(metric, "higher") == "higher" else min
    best = pick(m for m, _ in valid)
    return {i for m, i in valid if math.isclose(m, best, rel_tol=1e-12, abs_tol=1e-15)}


# ---------------------------------------------------------------------------------------------
# Per-sample pooling for the paired test


def _read_per_sample(path: Path) -> list[dict]:
    rows = []
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                rows.append(json.loads(line))
    return rows


def pooled_sample_columns(records: Sequence[Mapping]) -> dict[str, dict[str, float]] | None:
    """{sample id: {column: mean over the ok seeds}} from the records' per-sample files.

    Averaging each count over seeds keeps the corpus statistics exact: sum_i mean_s(edits_is) /
    sum_i mean_s(chars_is) is the CER of all seeds pooled when every seed scored every id.
    None when any ok record has no readable per-sample file (then no significance test).
    """
    sums: dict[str, dict[str, float]] = {}
    counts: dict[str, int] = collections.Counter()
    ok = [r for r in records if r.get("status") == "ok"]
    if not ok:
        return None
    names = quality.TEXT_COLUMNS + quality.FIELD_COLUMNS
    for record in ok:
        path = resolve_sidecar(record, record.get("per_sample_file"))
        if path is None:
            return None
        try:  # a damaged file costs the significance marks, never the report
            rows = _read_per_sample(path)
            for row in rows:
                acc = sums.setdefault(str(row["id"]), {})
                for name in names:
                    if name in row:
                        acc[name] = acc.get(name, 0.0) + float(row[name])
                counts[str(row["id"])] += 1
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return None
    return {sid: {k: v / counts[sid] for k, v in acc.items()} for sid, acc in sums.items()}


def paired_pvalue(a: Mapping[str, Mapping[str, float]], b: Mapping[str, Mapping[str, float]],
                  metric: str) -> float | None:
    """Paired bootstrap p-value of `metric` between two pooled cells, over their common sample ids."""
    ids = sorted(set(a) & set(b))
    if len(ids) < 2 or metric not in quality.STATISTICS:
        return None
    names = set.intersection(*(set(a[i]) & set(b[i]) for i in ids))
    a_cols = {n: np.array([a[i][n] for i in ids]) for n in names}
    b_cols = {n: np.array([b[i][n] for i in ids]) for n in names}
    try:
        return stats.paired_bootstrap_pvalue(a_cols, b_cols, quality.STATISTICS[metric],
                                               n_boot=N_BOOT, seed=BOOT_SEED)
    except KeyError:  # a column this metric needs is missing (e.g. no fields in this task)
        return None


# ---------------------------------------------------------------------------------------------
# Building the tables


def _label(key: tuple) -> str:
    return "/".join("-" if v is None else str(v) for v in key)


def _runs_cell(group: Sequence[Mapping]) -> Cell:
    ok = sum(r["status"] == "ok" for r in group)
    return Cell(f"{ok}/{len(group)}")


def _shown_keys(records: Sequence[Mapping], keys: Sequence[str]) -> list[str]:
    """Cell keys worth a column: framework and alignment always, others only when they vary."""
    shown = []
    for k in keys:
        values = {json.dumps(r.get("cell", {}).get(k), sort_keys=True) for r in records}
        if k in ("framework", "alignment") or len(values) > 1:
            shown.append(k)
    return shown


def quality_table(groups: dict[tuple, list[dict]], keys: Sequence[str], shown: Sequence[str],
                  number: int) -> Table | None:
    all_records = [r for g in groups.values() for r in g]
    # columns for the metrics any run has; when no run is ok, all of them, every cell "failed"
    columns = [(m, name) for m, name in QUALITY_COLUMNS if metric_values(all_records, m)] or \
        list(QUALITY_COLUMNS)
    if not groups:
        return None
    idx = [keys.index(k) for k in shown]
    table = Table("quality", f"Table {number}. Quality per cell",
                  "", [*shown, "ok runs", *(name for _, name in columns)], label_cols=len(shown))
    pooled = {key: pooled_sample_columns(g) for key, g in groups.items()}
    one_seed_used = False
    no_per_sample = [_label(k) for k, p in pooled.items() if p is None and metric_values(groups[k], "cer")]
    metric_cells: dict[str, list[Cell]] = {}
    for metric, _ in columns:
        means, cells = [], []
        for key, group in groups.items():
            values = metric_values(group, metric)
            if not values:
                failed = not any(r["status"] == "ok" for r in group)
                cells.append(Cell("failed" if failed else "—"))
                means.append(None)
                continue
            mean, half = mean_t_interval(values)
            if half is not None:
                cells.append(Cell(f"{_fmt_quality(mean)} ± {_fmt_quality(half)}"))
            else:
                ci = next((r["metrics"].get(f"{metric}_ci") for r in group
                           if r["status"] == "ok" and r["metrics"].get(f"{metric}_ci")), None)
                if ci:
                    cells.append(Cell(f"{_fmt_quality(mean)} [{_fmt_quality(ci[0])}, "
                                      f"{_fmt_quality(ci[1])}]", mark="†"))
                    one_seed_used = True
                else:
                    cells.append(Cell(_fmt_quality(mean)))
            means.append(mean)
        best = _best_index(means, metric)
        keys_list = list(groups)
        for i in best:
            cells[i].bold = True
        if len(best) == 1:
            (b,) = best
            for i, key in enumerate(keys_list):
                if i in best or means[i] is None or pooled[keys_list[b]] is None or pooled[key] is None:
                    continue
                p = paired_pvalue(pooled[keys_list[b]], pooled[key], metric)
                if p is not None and p < SIGNIFICANCE_P:
                    cells[i].mark = (cells[i].mark + "*").lstrip()
        metric_cells[metric] = cells
    for i, (key, group) in enumerate(groups.items()):
        row = [Cell(_label((key[j],))) for j in idx] + [_runs_cell(group)]
        row += [metric_cells[m][i] for m, _ in columns]
        table.rows.append(row)
        table.row_runs.append([r["run_id"] for r in group])
        table.row_labels.append(_label(key))
    caption = ("Mean over ok seeds ± 95% t-interval half-width over seeds. Bold: best per column "
               "(CER/WER lower is better, F1/exact match higher). "
               f"*: differs from the bold cell at p < {SIGNIFICANCE_P}, paired bootstrap over test samples "
               f"({N_BOOT} resamples, per-sample counts averaged over seeds, paired by sample id).")
    if one_seed_used:
        caption += (" †: only one ok seed; the interval [lo, hi] is that run's 95% bootstrap "
                    "interval over test samples, not a spread over seeds.")
    if no_per_sample:
        caption += " No per-sample file (so no significance test) for: " + ", ".join(no_per_sample) + "."
    table.caption = caption
    return table


def _median_range(values: Sequence[float]) -> tuple[float, str]:
    med = statistics.median(values)
    if len(values) == 1:
        return med, _fmt_cost(med)
    return med, f"{_fmt_cost(med)} ({_fmt_cost(min(values))}–{_fmt_cost(max(values))})"


def cost_table(groups: dict[tuple, list[dict]], keys: Sequence[str], shown: Sequence[str],
               number: int) -> Table | None:
    all_records = [r for g in groups.values() for r in g]
    columns = [(m, name) for m, name in COST_COLUMNS if metric_values(all_records, m)] or \
        [c for c in COST_COLUMNS if c[0] != "gpu_max_allocated_mib"]
    if not groups:
        return None
    idx = [keys.index(k) for k in shown]
    table = Table("cost", f"Table {number}. Cost per cell", "Median over ok seeds, (min–max) over seeds "
                  "in brackets; one value when one seed. Bold: best per column. Memory is the peak "
                  "over processes; MFU against the machine's measured matmul peak.",
                  [*shown, "ok runs", *(name for _, name in columns)], label_cols=len(shown))
    per_metric: dict[str, list[Cell]] = {}
    for metric, _ in columns:
        cells, medians = [], []
        for group in groups.values():
            values = metric_values(group, metric)
            if not values:
                failed = not any(r["status"] == "ok" for r in group)
                cells.append(Cell("failed" if failed else "—"))
                medians.append(None)
                continue
            med, text = _median_range(values)
            cells.append(Cell(text))
            medians.append(med)
        for i in _best_index(medians, metric):
            cells[i].bold = True
        per_metric[metric] = cells
    for i, (key, group) in enumerate(groups.items()):
        row = [Cell(_label((key[j],))) for j in idx] + [_runs_cell(group)]
        table.rows.append(row + [per_metric[m][i] for m, _ in columns])
        table.row_runs.append([r["run_id"] for r in group])
        table.row_labels.append(_label(key))
    return table


def _fmt_setting(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)


def parity_tables(docs: Sequence[Mapping], number: int) -> list[Table]:
    """Settings-difference and ablation tables for each parity document, numbered
    `Table <number>a`, `<number>b`, ... (a parity run is one experiment, its tables one number)."""
    tables: list[Table] = []

    def name() -> str:
        return f"Table {number}{chr(ord('a') + len(tables))}"

    for k, doc in enumerate(docs):
        label = doc.get("_label", f"parity {k + 1}")
        step = doc.get("first_divergent_step")
        summary = (f"max |Δloss| = {_fmt_number(doc.get('max_abs_dloss'))}, first divergent step = "
                   f"{'none' if step is None else step}")
        diff = doc.get("settings_diff") or []
        if diff:
            frameworks = sorted({f for row in diff for f in (row.get("values") or {})})
            t = Table(f"parity{k + 1}", f"{name()}. Effective settings ({label})",
                      "Settings read back from the live objects; 'differs' marks a setting whose "
                      f"values are not all equal (bold). {summary}.",
                      ["setting", *frameworks, "differs"], label_cols=1 + len(frameworks) + 1)
            for row in sorted(diff, key=lambda r: (not r.get("differs"), str(r.get("setting")))):
                values = row.get("values") or {}
                t.rows.append([Cell(str(row.get("setting"))),
                               *(Cell(_fmt_setting(values.get(f, "—"))) for f in frameworks),
                               Cell("yes" if row.get("differs") else "no", bold=bool(row.get("differs")))])
                t.row_runs.append([label])
                t.row_labels.append(str(row.get("setting")))
            tables.append(t)
        ablation = doc.get("ablation") or []
        if ablation:
            t = Table(f"ablation{k + 1}", f"{name()}. Ablation: one factor reverted to native ({label})",
                      "Each row starts from the aligned setup and reverts one factor; sorted by the "
                      f"largest absolute loss difference first. {summary}.",
                      ["factor", "max |Δloss|", "final-loss gap"])
            for row in sorted(ablation, key=lambda r: -(r.get("max_abs_dloss") or 0.0)):
                t.rows.append([Cell(str(row.get("factor"))), Cell(_fmt_number(row.get("max_abs_dloss"))),
                               Cell(_fmt_number(row.get("final_loss_gap")))])
                t.row_runs.append([label])
                t.row_labels.append(str(row.get("factor")))
            tables.append(t)
    return tables


def _fmt_number(x: Any) -> str:
    if x is None:
        return "—"
    if isinstance(x, (int, float)) and not isinstance(x, bool):
        return f"{x:.3g}" if (x != 0 and (abs(x) < 1e-3 or abs(x) >= 1e4)) else f"{x:.4f}"
    return str(x)


def _memory_metric(records: Sequence[Mapping]) -> str:
    return "gpu_max_allocated_mib" if metric_values(records, "gpu_max_allocated_mib") else "peak_rss_above_baseline_mib"


def levers_table(records: Sequence[Mapping], keys: Sequence[str], number: int) -> Table | None:
    """Peak memory and throughput per memory lever, relative to the lever named "baseline"."""
    if "lever" not in keys:
        return None
    lever_records = [r for r in records if r.get("cell", {}).get("lever") is not None]
    if not lever_records:
        return None
    others = [k for k in keys if k != "lever"]
    shown = _shown_keys(lever_records, others)
    mem = _memory_metric(lever_records)
    table = Table("levers", f"Table {number}. Memory levers",
                  f"Median over ok seeds. Memory = {mem}; ratio = this lever / the lever named "
                  "'baseline' in the same cell (memory: < 1 saves; throughput: < 1 is slower).",
                  [*shown, "lever", "ok runs", "peak memory (MiB)", "memory ratio", "samples/s",
                   "throughput ratio"], label_cols=len(shown) + 1)
    for other_key, group in group_cells(lever_records, others).items():
        by_lever = group_cells(group, ("lever",))
        base = by_lever.get(("baseline",), [])
        base_mem = metric_values(base, mem)
        base_tput = metric_values(base, "train_samples_per_s")
        for (lever,), lrecs in by_lever.items():
            m, t = metric_values(lrecs, mem), metric_values(lrecs, "train_samples_per_s")
            m_med = statistics.median(m) if m else None
            t_med = statistics.median(t) if t else None

            def ratio(x, base_values):
                if x is None or not base_values or statistics.median(base_values) == 0:
                    return "—"
                return f"{x / statistics.median(base_values):.2f}×"

            failed = not any(r["status"] == "ok" for r in lrecs)
            table.rows.append([*(Cell(_label((other_key[others.index(k)],))) for k in shown),
                               Cell(str(lever), bold=lever == "baseline"), _runs_cell(lrecs),
                               Cell("failed" if failed else _fmt_cost(m_med) if m_med is not None else "—"),
                               Cell(ratio(m_med, base_mem)),
                               Cell("failed" if failed else _fmt_cost(t_med) if t_med is not None else "—"),
                               Cell(ratio(t_med, base_tput))])
            table.row_runs.append([r["run_id"] for r in lrecs])
            table.row_labels.append(f"{_label(other_key)}/{lever}")
    return table


# ---------------------------------------------------------------------------------------------
# Figure inputs


def _loss_series(groups: dict[tuple, list[dict]], keys: Sequence[str]) -> list[dict]:
    series = []
    for key, group in groups.items():
        logs = [{s["step"]: s["loss"] for s in (r.get("train") or {}).get("steps") or []
                 if isinstance(s.get("loss"), (int, float))}
                for r in group if r["status"] == "ok"]
        logs = [log for log in logs if log]
        if not logs:
            continue
        steps = sorted(set.intersection(*(set(log) for log in logs)))
        if not steps:
            continue
        values = np.array([[log[s] for s in steps] for log in logs])
        cell = dict(zip(keys, key))
        series.append({"label": _label(key), "framework": cell.get("framework"),
                       "alignment": cell.get("alignment"), "steps": steps,
                       "mean": values.mean(0).tolist(), "lo": values.min(0).tolist(),
                       "hi": values.max(0).tolist(), "n_seeds": len(logs)})
    return series


def _pareto_points(groups: dict[tuple, list[dict]], keys: Sequence[str]) -> tuple[list[dict], str, str]:
    all_records = [r for g in groups.values() for r in g]
    mem = _memory_metric(all_records)
    use_f1 = bool(metric_values(all_records, "field_f1"))
    points = []
    for key, group in groups.items():
        x = metric_values(group, mem)
        y = metric_values(group, "field_f1" if use_f1 else "cer")
        if not x or not y:
            continue
        if not use_f1:
            y = [1 - v for v in y]
        cell = dict(zip(keys, key))
        points.append({"label": _label(key), "framework": cell.get("framework"),
                       "alignment": cell.get("alignment"),
                       "x": statistics.fmean(x), "y": statistics.fmean(y),
                       "xerr": (min(x), max(x)) if len(x) > 1 else None,
                       "yerr": (min(y), max(y)) if len(y) > 1 else None})
    ylabel = "field F1 (mean over seeds)" if use_f1 else "1 − CER (mean over seeds)"
    xlabel = ("GPU max allocated (MiB)" if mem == "gpu_max_allocated_mib" else "peak RSS (MiB)") + \
        ", bars: min–max over seeds"
    return points, xlabel, ylabel


def figure_inputs(groups, keys, parity_docs) -> dict:
    inputs = {}
    series = _loss_series(groups, keys)
    if series:
        inputs["loss_curves"] = ("Training loss per cell", figures.loss_curves, {"series": series})
    points, xlabel, ylabel = _pareto_points(groups, keys)
    if points:
        inputs["pareto"] = ("Quality against peak memory, Pareto frontier", figures.pareto,
                            {"points": points, "xlabel": xlabel, "ylabel": ylabel})
    labels, values, lows, highs, colors = [], [], [], [], []
    for key, group in groups.items():
        v = metric_values(group, "train_samples_per_s")
        if v:
            labels.append(_label(key))
            values.append(statistics.median(v))
            lows.append(min(v))
            highs.append(max(v))
            colors.append(figures.color_for(dict(zip(keys, key)).get("framework") or _label(key)))
    if values:
        inputs["throughput"] = ("Training throughput", figures.bars,
                                {"labels": labels, "values": values, "lows": lows, "highs": highs,
                                 "colors": colors, "ylabel": "samples/s",
                                 "title": "Training throughput: median, bars = min–max over seeds"})
    n = 0
    for doc in parity_docs:
        ablation = sorted(doc.get("ablation") or [], key=lambda r: -(r.get("max_abs_dloss") or 0.0))
        if not ablation:
            continue
        n += 1
        inputs["ablation" if n == 1 else f"ablation_{n}"] = (
            f"Ablation ({doc.get('_label', '')})", figures.bars,
            {"labels": [str(r.get("factor")) for r in ablation],
             "values": [float(r.get("max_abs_dloss") or 0.0) for r in ablation],
             "ylabel": "max |Δloss| vs aligned", "horizontal": True,
             "title": "Ablation: loss gap when one factor reverts to native"})
    return inputs


# ---------------------------------------------------------------------------------------------
# Methods


def _flatten(d: Mapping, prefix: str = "") -> dict[str, Any]:
    flat = {}
    for k, v in d.items():
        name = f"{prefix}{k}"
        if isinstance(v, Mapping) and v:
            flat.update(_flatten(v, name + "."))
        else:
            flat[name] = v
    return flat


def _unique(values: Iterable[Any]) -> list[Any]:
    seen, out = set(), []
    for v in values:
        key = json.dumps(v, sort_keys=True, default=str)
        if key not in seen:
            seen.add(key)
            out.append(v)
    return out


def error_line(error: str | None) -> str:
    """One line that says what went wrong: the first non-empty line, unless the text is a Python
    traceback tail, whose first line says nothing; then its last non-empty line (the exception)."""
    lines = [ln.strip() for ln in (error or "").splitlines() if ln.strip()]
    if not lines:
        return "(no error text)"
    if lines[0].startswith("Traceback") or lines[0].startswith("File "):
        return lines[-1]
    return lines[0]


def methods_facts(records: Sequence[Mapping]) -> dict:
    envs = [r.get("env") or {} for r in records]
    flat_specs = [_flatten(r.get("spec") or {}) for r in records]
    all_keys = sorted(set().union(*flat_specs)) if flat_specs else []
    constant, varying = {}, {}
    for k in all_keys:
        values = _unique(s.get(k, "<absent>") for s in flat_specs)
        if len(values) == 1:
            constant[k] = values[0]
        else:
            varying[k] = sorted(values, key=lambda v: (0, v, "") if isinstance(v, (int, float))
                                and not isinstance(v, bool) else (1, 0, str(v)))
    packages: dict[str, list] = {}
    for env in envs:
        for name, version in (env.get("packages") or {}).items():
            if version not in packages.setdefault(name, []):
                packages[name].append(version)
    return {
        "models": _unique({"name": (e.get("model") or {}).get("name"),
                           "checksum": (e.get("model") or {}).get("checksum")} for e in envs),
        "datasets": _unique({"name": (e.get("dataset") or {}).get("name"),
                             "checksum": (e.get("dataset") or {}).get("checksum")} for e in envs),
        "hardware": _unique({"cpu": e.get("cpu"), "cores": e.get("cores"), "gpu": e.get("gpu") or [],
                             "torch_threads": e.get("torch_threads"), "platform": e.get("platform"),
                             "matmul_peak_gflops": e.get("matmul_peak_gflops")} for e in envs),
        "python": _unique(e.get("python") for e in envs),
        "packages": dict(sorted(packages.items())),
        "git": _unique({"commit": e.get("git_commit"), "dirty": e.get("git_dirty")} for e in envs),
        "seeds": sorted({r.get("cell", {}).get("seed") for r in records} - {None}, key=str),
        "spec_constant": constant,
        "spec_varying": varying,
        "commands": _unique(r.get("command") for r in records),
        "suites": _unique(r.get("suite") for r in records),
    }


# ---------------------------------------------------------------------------------------------
# Build


def build_report(records: Sequence[Mapping], parity_docs: Sequence[Mapping] = ()) -> Report:
    """Every table, fact and figure input of the report, from records (any status, any mix)."""
    records = sorted(records, key=lambda r: (r.get("started_at") or "", r["run_id"]))
    keys = cell_keys(records)
    groups = group_cells(records, keys)
    shown = _shown_keys(records, keys)
    tables: list[Table] = []
    for make in (quality_table, cost_table):
        table = make(groups, keys, shown, len(tables) + 1)
        if table:
            tables.append(table)
    number = len(tables) + 1
    parity = parity_tables(parity_docs, number)
    if parity:
        tables += parity
        number += 1
    levers = levers_table(records, keys, number)
    if levers:
        tables.append(levers)
    failed = [{"run_id": r["run_id"], "cell": _label(tuple(r.get("cell", {}).values())),
               "status": r["status"], "error": error_line(r.get("error"))}
              for r in records if r["status"] != "ok"]
    facts = methods_facts(records)
    suites = ", ".join(str(s) for s in facts["suites"])
    return Report(title=f"lorabench report: {suites}", tables=tables, methods=facts, failed=failed,
                  status_counts=dict(collections.Counter(r["status"] for r in records)),
                  figure_inputs=figure_inputs(groups, keys, parity_docs))


def draw_figures(report: Report, figures_dir: Path) -> None:
    for name, (title, draw, kwargs) in report.figure_inputs.items():
        png = draw(stem=figures_dir / name, **kwargs)
        report.figures.append({"name": name, "title": title, "png": png, "pdf": png.with_suffix(".pdf")})


# ---------------------------------------------------------------------------------------------
# Renderers


def _md(text: Any) -> str:
    """Text safe inside a Markdown table cell: no raw HTML, no column breaks, one line."""
    s = html.escape(str(text), quote=False).replace("|", "\\|")
    return " ".join(s.split())


def _md_cell(cell: Cell) -> str:
    text = _md(cell.text)
    if cell.bold:
        text = f"**{text}**"
    mark = cell.mark.replace("*", "\\*")
    return text + mark


def _yaml_block(data: Any) -> str:
    return yaml.safe_dump(data, sort_keys=True, default_flow_style=False, allow_unicode=True).rstrip()


def methods_items(facts: dict, counts: Mapping[str, int]) -> list[tuple[str, str]]:
    """(label, plain text) lines of the methods section, shared by the Markdown and HTML renderers."""
    items = [("Model", f"{m.get('name')} (checksum {m.get('checksum')})") for m in facts["models"]]
    items += [("Dataset", f"{d.get('name')} (checksum {d.get('checksum')})") for d in facts["datasets"]]
    items += [("Hardware", f"CPU {h['cpu']}, {h['cores']} cores, torch threads {h['torch_threads']}, "
                           f"GPU {', '.join(map(str, h['gpu'])) or 'none'}, {h['platform']}, "
                           f"measured matmul peak {h['matmul_peak_gflops']} GFLOP/s")
              for h in facts["hardware"]]
    items += [
        ("Python", ", ".join(map(str, facts["python"]))),
        ("Packages", ", ".join(f"{n} {'/'.join(map(str, vs))}" for n, vs in facts["packages"].items())),
        ("Code", ", ".join(f"{g['commit']}{' (dirty)' if g['dirty'] else ''}" for g in facts["git"])),
        ("Seeds", ", ".join(map(str, facts["seeds"])) or "—"),
        ("Runs", ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))),
    ]
    return items


def methods_blocks(facts: dict) -> list[tuple[str, str, str]]:
    """(caption, language, text) code blocks of the methods section."""
    return [("Spec keys equal in every run:", "yaml", _yaml_block(facts["spec_constant"])),
            ("Spec keys that vary between runs:", "yaml", _yaml_block(facts["spec_varying"])),
            ("Commands:", "", "\n".join(map(str, facts["commands"])))]


def _methods_md(facts: dict, counts: Mapping[str, int]) -> list[str]:
    out = ["## Methods", ""]
    out += [f"- **{label}**: {_md(text)}" for label, text in methods_items(facts, counts)]
    for caption, lang, text in methods_blocks(facts):
        out += ["", caption, "", f"```{lang}", text, "```"]
    return out + [""]


def render_markdown(report: Report, figures_rel: str = "figures") -> str:
    out = [f"# {_md(report.title)}", ""]
    total = sum(report.status_counts.values())
    out.append(f"Generated from {total} run records: " +
               ", ".join(f"{n} {s}" for s, n in sorted(report.status_counts.items())) +
               ". Every table row links (footnote) to the run ids it aggregates.")
    out.append("")
    footnotes = []
    for table in report.tables:
        out += [f"## {_md(table.title)}", "", _md(table.caption), ""]
        out.append("| " + " | ".join(_md(h) for h in table.header) + " | runs |")
        out.append("|" + "---|" * (len(table.header) + 1))
        for i, row in enumerate(table.rows):
            note = f"{table.key}-{i + 1}"
            out.append("| " + " | ".join(_md_cell(c) for c in row) + f" | [^{note}] |")
            footnotes.append(f"[^{note}]: {_md(table.title.split('.')[0])}, {_md(table.row_labels[i])}: "
                             + ", ".join(_md(r) for r in table.row_runs[i]))
        out.append("")
    for fig in report.figures:
        out += [f"### Figure: {_md(fig['title'])}", "",
                f"![{_md(fig['title'])}]({figures_rel}/{fig['png'].name})", ""]
    out += ["## Failed runs", ""]
    if report.failed:
        out += ["Not ok runs are counted in the 'ok runs' columns and left out of every mean. The "
                "error line is the first line of the error, or the exception of a traceback.", "",
                "| run id | cell | status | error |", "|---|---|---|---|"]
        out += [f"| {_md(f['run_id'])} | {_md(f['cell'])} | {_md(f['status'])} | {_md(f['error'])} |"
                for f in report.failed]
    else:
        out.append("None: every run finished ok.")
    out.append("")
    out += _methods_md(report.methods, report.status_counts)
    out += ["## Run ids per table row", ""] + footnotes + [""]
    return "\n".join(out)


_TEX_SPECIALS = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#",
                 "_": r"\_", "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
                 "<": r"\textless{}", ">": r"\textgreater{}"}
_TEX_SYMBOLS = {"±": r"$\pm$", "–": "--", "†": r"$^\dagger$", "×": r"$\times$", "—": "---",
                "Δ": r"$\Delta$", "|": r"$|$", "−": "$-$"}


def _tex(text: Any) -> str:
    return "".join(_TEX_SPECIALS.get(ch) or _TEX_SYMBOLS.get(ch) or ch for ch in str(text))


def _tex_cell(cell: Cell) -> str:
    text = _tex(cell.text)
    if cell.bold:
        text = rf"\textbf{{{text}}}"
    if "*" in cell.mark:
        text += r"$^{*}$"
    if "†" in cell.mark:
        text += r"$^{\dagger}$"
    return text


def render_latex(report: Report) -> str:
    out = [f"% {_tex(report.title)} -- generated by `lorabench report`; needs \\usepackage{{booktabs}}",
           "% Run ids behind each row follow it as a comment.", ""]
    for table in report.tables:
        n_left = max(1, min(table.label_cols, len(table.header)))
        spec = "l" * n_left + "r" * (len(table.header) - n_left)
        out += [r"\begin{table}[t]", r"\centering", r"\small",
                rf"\caption{{{_tex(table.title.split('. ', 1)[-1])}. {_tex(table.caption)}}}",
                rf"\label{{tab:{table.key}}}", rf"\begin{{tabular}}{{{spec}}}", r"\toprule",
                " & ".join(_tex(h) for h in table.header) + r" \\", r"\midrule"]
        for row, runs in zip(table.rows, table.row_runs):
            out.append(" & ".join(_tex_cell(c) for c in row) + r" \\")
            out.append("% runs: " + ", ".join(runs).replace("\n", " "))
        out += [r"\bottomrule", r"\end{tabular}", r"\end{table}", ""]
    return "\n".join(out)


_CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:0.5em 0 1.5em}th,td{padding:3px 10px;text-align:right}
th.l,td.l{text-align:left}thead tr{border-top:2px solid #000;border-bottom:1px solid #000}
tbody tr:last-child{border-bottom:2px solid #000}caption{caption-side:bottom;text-align:left;font-size:90%;
color:#444;max-width:60em;padding-top:4px}pre{background:#f6f6f6;padding:8px;overflow-x:auto}
img{max-width:100%}figure{margin:1em 0}tr[title]:hover{background:#f0f4ff}"""


def _h(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _html_cell(cell: Cell, left: bool = False) -> str:
    text = _h(cell.text)
    if cell.bold:
        text = f"<strong>{text}</strong>"
    if cell.mark:
        text += f"<sup>{_h(cell.mark)}</sup>"
    return f'<td class="l">{text}</td>' if left else f"<td>{text}</td>"


def render_html(report: Report) -> str:
    """A self-contained page: inline CSS, figures as base64 PNG, every text escaped."""
    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
           f"<title>{_h(report.title)}</title><style>{_CSS}</style></head><body>",
           f"<h1>{_h(report.title)}</h1>",
           "<p>" + _h(f"{sum(report.status_counts.values())} run records: " +
                      ", ".join(f"{n} {s}" for s, n in sorted(report.status_counts.items())) +
                      ". Hover a table row to see the run ids it aggregates.") + "</p>"]
    for table in report.tables:
        out.append(f"<h2>{_h(table.title)}</h2>")
        out.append(f'<table id="{_h(table.key)}"><caption>{_h(table.caption)}</caption><thead><tr>' +
                   "".join(f'<th{" class=l" if i < table.label_cols else ""}>{_h(h)}</th>'
                           for i, h in enumerate(table.header)) + "</tr></thead><tbody>")
        for row, runs in zip(table.rows, table.row_runs):
            out.append(f'<tr title="{_h("runs: " + ", ".join(runs))}">' +
                       "".join(_html_cell(c, i < table.label_cols) for i, c in enumerate(row)) + "</tr>")
        out.append("</tbody></table>")
    for fig in report.figures:
        data = base64.b64encode(Path(fig["png"]).read_bytes()).decode("ascii")
        out.append(f'<figure><img alt="{_h(fig["title"])}" src="data:image/png;base64,{data}">'
                   f"<figcaption>{_h(fig['title'])}</figcaption></figure>")
    out.append("<h2>Failed runs</h2>")
    if report.failed:
        out.append("<table><thead><tr>" + "".join(f'<th class="l">{h}</th>' for h in
                                                  ("run id", "cell", "status", "error")) + "</tr></thead><tbody>")
        out += ["<tr>" + "".join(f'<td class="l">{_h(f[k])}</td>' for k in ("run_id", "cell", "status", "error"))
                + "</tr>" for f in report.failed]
        out.append("</tbody></table>")
    else:
        out.append("<p>None: every run finished ok.</p>")
    out.append("<h2>Methods</h2><ul>")
    out += [f"<li><b>{_h(label)}</b>: {_h(text)}</li>"
            for label, text in methods_items(report.methods, report.status_counts)]
    out.append("</ul>")
    out += [f"<p>{_h(caption)}</p><pre>{_h(text)}</pre>" for caption, _, text in methods_blocks(report.methods)]
    out.append("</body></html>")
    return "\n".join(out)


def write_report(records: Sequence[Mapping], out_dir: str | Path,
                 parity_docs: Sequence[Mapping] = ()) -> dict[str, Path]:
    """Write report.md, tables.tex, report.html and figures/*.png|pdf under `out_dir`.

    Returns {"md", "tex", "html", "figures_dir"} paths. Records of any status are accepted; a
    suite where every run failed still gets a report that says so.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    report = build_report(records, parity_docs)
    draw_figures(report, out_dir / "figures")
    paths = {"md": out_dir / "report.md", "tex": out_dir / "tables.tex", "html": out_dir / "report.html",
             "figures_dir": out_dir / "figures"}
    paths["md"].write_text(render_markdown(report), encoding="utf-8")
    paths["tex"].write_text(render_latex(report), encoding="utf-8")
    paths["html"].write_text(render_html(report), encoding="utf-8")
    return paths
