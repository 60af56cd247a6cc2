"""The per-cell tables: quality (with significance marks), cost, parity / ablation, memory levers."""

from __future__ import annotations

import json
import statistics
from collections.abc import Mapping, Sequence
from typing import Any

from harness.analysis.report.model import (TableCell, Table, best_index, fmt_cost, fmt_number,
                                           fmt_quality, column_value, roundtrip_cell, runs_cell, shown_keys)
from harness.analysis.cell_names import cell_label, group_label
from harness.analysis.report.outcome_ablation import outcome_table
from harness.analysis.report.significance import SIGNIFICANCE_P, holm_pvalues, pooled_sample_columns
from harness.config.profiles import factor_setting
from harness.results.metric_table import COST_COLUMNS, QUALITY_COLUMNS, TIMING_METRICS
from harness.results.stats import mean_t_interval
from harness.results.store import group_cells, metric_values, timed_under_load


def _quality_cell(group: Sequence[Mapping], metric: str) -> tuple[TableCell, float | None]:
    """One cell of the quality table and the mean behind it (None when there is no value)."""
    values = metric_values(group, metric)
    if not values:
        failed = not any(r["status"] == "ok" for r in group)
        return TableCell("failed" if failed else "—"), None
    mean, half = mean_t_interval(values)
    if half is not None:
        return TableCell(f"{fmt_quality(mean)} ± {fmt_quality(half)}"), mean
    ci = next((r["metrics"].get(f"{metric}_ci") for r in group
               if r["status"] == "ok" and r["metrics"].get(f"{metric}_ci")), None)
    if ci:
        return TableCell(f"{fmt_quality(mean)} [{fmt_quality(ci[0])}, {fmt_quality(ci[1])}]", mark="†"), mean
    return TableCell(fmt_quality(mean)), mean


def quality_table(groups: dict[tuple, list[dict]], keys: Sequence[str], shown: Sequence[str],
                  number: int) -> Table | None:
    all_records = [r for g in groups.values() for r in g]
    # columns for the metrics any run has; when no run is ok, all of them, every cell "failed"; a
    # suite that does not evaluate (ok runs, no quality metric) shows only what it measured
    columns = [(m, name) for m, name in QUALITY_COLUMNS if metric_values(all_records, m)]
    evaluated = bool(columns) or not any(r["status"] == "ok" for r in all_records)
    if not columns and evaluated:
        columns = list(QUALITY_COLUMNS)
    if not groups:
        return None
    idx = [keys.index(k) for k in shown]
    keys_list = list(groups)
    table = Table("quality", f"Table {number}. {'Quality' if evaluated else 'Round trip'} per cell",
                  "", [*shown, "ok runs", *(name for _, name in columns), "round trip"], label_cols=len(shown))
    pooled = {key: pooled_sample_columns(g) for key, g in groups.items()}
    no_per_sample = [group_label(k, keys, groups[k]) for k, p in pooled.items()
                     if p is None and metric_values(groups[k], "cer")]
    metric_cells: dict[str, list[TableCell]] = {}
    comparisons: list[tuple[str, int, int]] = []  # (metric, row, best row): one family per table
    for metric, _ in columns:
        made = [_quality_cell(group, metric) for group in groups.values()]
        cells, means = [c for c, _ in made], [m for _, m in made]
        best = best_index(means, metric)
        for i in best:
            cells[i].bold = True
        if best:  # tied best cells (aligned frameworks agree to 1e-6) are all bold; the first is the reference
            b = min(best)
            comparisons += [(metric, i, b) for i, key in enumerate(keys_list)
                            if i not in best and means[i] is not None
                            and pooled[keys_list[b]] is not None and pooled[key] is not None]
        metric_cells[metric] = cells
    adjusted, n_tests, n_boot = holm_pvalues([(pooled[keys_list[b]], pooled[keys_list[i]], metric)
                                              for metric, i, b in comparisons])
    for (metric, i, _), p in zip(comparisons, adjusted):
        if p is not None and p < SIGNIFICANCE_P:
            cells = metric_cells[metric]
            cells[i].mark = (cells[i].mark + "*").lstrip()
    for i, (key, group) in enumerate(groups.items()):
        row = [TableCell(column_value(key[j])) for j in idx] + [runs_cell(group)]
        row += [metric_cells[m][i] for m, _ in columns] + [roundtrip_cell(group)]
        table.rows.append(row)
        table.row_runs.append([r["run_id"] for r in group])
        table.row_labels.append(group_label(key, keys, group))
    caption = ("Round trip: runs whose saved adapter, reloaded in a fresh process through PEFT's and "
               "ms-swift's loaders, gave the trained model's logits (max |Δ| ≤ 1e-5, fp32) with every trained "
               "tensor saved and equal merged greedy output (bold when one failed). "
               "Mean over ok seeds ± 95% t-interval half-width over seeds. Bold: best per column "
               "(CER/WER lower is better, F1/exact match higher; none when every cell ties). "
               f"*: differs from the bold cell at p < {SIGNIFICANCE_P} after Holm's correction for "
               f"all {n_tests} comparisons this table makes, paired bootstrap over test samples "
               f"({n_boot} resamples, per-sample counts averaged over seeds, paired by sample id).")
    if not evaluated:
        caption = caption.split(" Mean over ok seeds")[0] + " This suite does not evaluate: no quality columns."
    if any("†" in c.mark for cells in metric_cells.values() for c in cells):
        caption += (" †: only one ok seed; the interval [lo, hi] is that run's 95% bootstrap "
                    "interval over test samples, not a spread over seeds.")
    if no_per_sample:
        caption += " No per-sample file (so no significance test) for: " + ", ".join(no_per_sample) + "."
    table.caption = caption
    return table


def _median_range(values: Sequence[float]) -> tuple[float, str]:
    med = statistics.median(values)
    if len(values) == 1:
        return med, fmt_cost(med)
    return med, f"{fmt_cost(med)} ({fmt_cost(min(values))}–{fmt_cost(max(values))})"


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
                  "over processes; MFU against the machine's measured matmul peak. "
                  + load_caption(all_records),
                  [*shown, "ok runs", *(name for _, name in columns)], label_cols=len(shown))
    per_metric: dict[str, list[TableCell]] = {}
    for metric, _ in columns:
        cells, medians = [], []
        for group in groups.values():
            values = metric_values(group, metric)
            if not values:
                failed = not any(r["status"] == "ok" for r in group)
                cells.append(TableCell("failed" if failed else "—"))
                medians.append(None)
                continue
            med, text = _median_range(values)
            loaded = metric in TIMING_METRICS and any(timed_under_load(r) for r in group if r["status"] == "ok")
            cells.append(TableCell(text, mark=LOADED_MARK if loaded else ""))
            medians.append(med)
        for i in best_index(medians, metric):
            cells[i].bold = True
        per_metric[metric] = cells
    for i, (key, group) in enumerate(groups.items()):
        row = [TableCell(column_value(key[j])) for j in idx] + [runs_cell(group)]
        table.rows.append(row + [per_metric[m][i] for m, _ in columns])
        table.row_runs.append([r["run_id"] for r in group])
        table.row_labels.append(group_label(key, keys, group))
    return table


LOADED_MARK = "‡"


def load_caption(records: Sequence[Mapping]) -> str:
    """How the timings were taken: alone on the machine, or which runs shared it with other work."""
    ok = [r for r in records if r.get("status") == "ok"]
    watched = [r for r in ok if (r.get("load") or {}).get("other_cpu_fraction") is not None]
    if not watched:
        return "The machine's load was not recorded for these runs: their timings may include other work."
    loaded = [r for r in watched if timed_under_load(r)]
    worst = max(r["load"]["other_cpu_fraction"] for r in watched)
    lanes = max(int((r.get("env") or {}).get("lanes") or 1) for r in watched)
    if lanes > 1:
        cores = sorted({len(r["load"].get("cpus") or []) for r in watched})
        text = (f"Runs went {lanes} at a time, each pinned to {'/'.join(map(str, cores))} core(s) of its own with "
                "as many threads, so every run is timed on the same share of the machine; other processes "
                f"took at most {worst:.0%} of a run's cores' CPU time.")
    else:
        text = (f"Runs went one at a time on the whole machine; other processes took at most "
                f"{worst:.0%} of the machine's CPU time during a run.")
    if loaded:
        limit = loaded[0]["load"]["thresholds"]["other_cpu_fraction"]
        text += (f" {LOADED_MARK}: timed under load ({len(loaded)} of {len(watched)} runs: other processes "
                 f"took more than {limit:.0%} of the CPU, or the hypervisor stole time); its speed is not "
                 "the framework's, and regress does not compare it.")
    return text


# The phases of harness.run.runner.phase_times, as the phase table shows them (several records' keys
# fold into one column).
PHASE_COLUMNS = (
    ("start + imports", ("start_imports_s",)),
    ("set-up", ("setup_s",)),
    ("data", ("data_s",)),
    ("forward", ("forward_s",)),
    ("backward", ("backward_s",)),
    ("optimizer", ("optimizer_s",)),
    ("save", ("save_s",)),
    ("eval: load", ("eval_load_s",)),
    ("eval: generate", ("eval_generate_s",)),
    ("eval: score", ("eval_score_s",)),
    ("round trip", ("roundtrip_s",)),
    ("other", ("other_s",)),
)


def phase_table(groups: dict[tuple, list[dict]], keys: Sequence[str], shown: Sequence[str],
                number: int) -> Table | None:
    """Where each cell's wall time went, in seconds (median over ok seeds); None for records without phases."""
    if not any(r.get("phases") for g in groups.values() for r in g if r["status"] == "ok"):
        return None
    idx = [keys.index(k) for k in shown]
    table = Table("phases", f"Table {number}. Where each cell's time went (s)",
                  "Median over ok seeds of each phase's seconds, from the workers' own clocks. Start + imports: "
                  "the train and eval processes' interpreter start and imports. Data / forward / backward / "
                  "optimizer: summed over the training steps. Eval: load is the base model, the adapter and the "
                  "PEFT loader's round-trip check; generate is batched greedy decoding. Round trip: the ms-swift "
                  "loader's own process. Other: job preparation, process start and exit, the step loop's "
                  "callbacks, the record. " + load_caption([r for g in groups.values() for r in g]),
                  [*shown, *(name for name, _ in PHASE_COLUMNS), "wall"], label_cols=len(shown))
    for key, group in groups.items():
        ok = [r for r in group if r["status"] == "ok" and r.get("phases")]
        row = [TableCell(column_value(key[j])) for j in idx]
        loaded = any(timed_under_load(r) for r in ok)
        for _, names in PHASE_COLUMNS:
            values = [sum(r["phases"].get(n) or 0.0 for n in names) for r in ok]
            row.append(TableCell(fmt_cost(statistics.median(values)) if values else "—"))
        walls = [r["wall_s"] for r in ok if r.get("wall_s")]
        row.append(TableCell(fmt_cost(statistics.median(walls)) if walls else "—",
                             mark=LOADED_MARK if loaded else ""))
        table.rows.append(row)
        table.row_runs.append([r["run_id"] for r in group])
        table.row_labels.append(group_label(key, keys, group))
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
        doc_label = doc.get("_label", f"parity {k + 1}")
        step = doc.get("first_divergent_step")
        summary = (f"max |Δloss| = {fmt_number(doc.get('max_abs_dloss'))}, first divergent step = "
                   f"{'none' if step is None else step}")
        diff = doc.get("settings_diff") or []
        if diff:
            frameworks = sorted({f for row in diff for f in (row.get("values") or {})})
            t = Table(f"parity{k + 1}", f"{name()}. Effective settings ({doc_label})",
                      "Settings read back from the live objects; 'differs' marks a setting whose "
                      f"values are not all equal (bold). {summary}.",
                      ["setting", *frameworks, "differs"], label_cols=1 + len(frameworks) + 1)
            for row in sorted(diff, key=lambda r: (not r.get("differs"), str(r.get("setting")))):
                values = row.get("values") or {}
                t.rows.append([TableCell(str(row.get("setting"))),
                               *(TableCell(_fmt_setting(values.get(f, "—"))) for f in frameworks),
                               TableCell("yes" if row.get("differs") else "no", bold=bool(row.get("differs")))])
                t.row_runs.append([doc_label])
                t.row_labels.append(str(row.get("setting")))
            tables.append(t)
        ablation = doc.get("ablation") or []
        if ablation:
            t = Table(f"ablation{k + 1}", f"{name()}. Ablation: one factor reverted to native ({doc_label})",
                      "Each row starts from the aligned setup and reverts one factor; sorted by the "
                      f"largest absolute loss difference first. {summary}. The per-step training-loss gap is "
                      "an alignment tool (which setting makes two runs part ways), not a ranking of what "
                      "changes the fine-tuned result.",
                      ["factor", "max |Δloss|", "final-loss gap"])
            for row in sorted(ablation, key=lambda r: -(r.get("max_abs_dloss") or 0.0)):
                t.rows.append([TableCell(str(row.get("factor"))), TableCell(fmt_number(row.get("max_abs_dloss"))),
                               TableCell(fmt_number(row.get("final_loss_gap")))])
                t.row_runs.append([doc_label])
                t.row_labels.append(str(row.get("factor")))
            tables.append(t)
        if doc.get("factors") is not None:
            tables.append(_profile_ablation_table(doc, name(), doc_label))
        if doc.get("mode") == "outcome":
            tables.append(outcome_table(doc, name(), doc_label))
    return tables


def _profile_ablation_table(doc: Mapping, title: str, doc_label: str) -> Table:
    """`parity --ablate --profiles A,B`: A with one factor at a time set to B's value, largest effect first."""
    a, b = doc.get("first"), doc.get("second")
    t = Table(f"profiles-{a}-{b}", f"{title}. Why {a} and {b} train differently",
              f"{a} on {doc.get('framework')} for {doc.get('steps')} steps, then the same with one factor set to "
              f"{b}'s value; max |Δloss| and final-loss Δ against {a}'s own run, largest first. The last rows run "
              f"all of {b} at once. A dash: the factor cannot be set on that framework (reason in the run). "
              "The per-step loss gap over a few steps is an alignment tool: it also moves with which samples "
              "each step saw, and does not rank what changes the result (the outcome ablation does).",
              ["factor", f"{a}", f"{b}", "max |Δloss|", "final-loss Δ"], label_cols=3)
    for row in [*(doc.get("factors") or []), *(doc.get("totals") or [])]:
        factor, values = str(row.get("factor")), row.get("values") or {}
        t.rows.append([TableCell(factor), TableCell(factor_setting(factor, values.get(a))),
                       TableCell(factor_setting(factor, values.get(b))),
                       TableCell(fmt_number(row.get("max_abs_dloss"))),
                       TableCell(fmt_number(row.get("final_loss_gap")))])
        t.row_runs.append([doc_label])
        t.row_labels.append(factor)
    return t


# The memory figure a comparison leads with, best first: GPU allocated on a GPU; on the CPU anonymous
# memory above imports (records from before it was metered fall back to RSS above imports).
MEMORY_LEAD = ("gpu_max_allocated_mib", "peak_anon_above_baseline_mib", "peak_rss_above_baseline_mib")
MEMORY_LABELS = {"gpu_max_allocated_mib": "GPU max allocated",
                 "peak_anon_above_baseline_mib": "peak anonymous memory above imports",
                 "peak_rss_above_baseline_mib": "peak RSS above imports"}


def memory_metric(records: Sequence[Mapping]) -> str:
    return next((m for m in MEMORY_LEAD if metric_values(records, m)), MEMORY_LEAD[-1])


def secondary_memory_metric(records: Sequence[Mapping], lead: str) -> str | None:
    """The figure shown next to the lead: RSS beside anonymous memory; on a GPU, the CPU side
    (anonymous memory, where offloaded states live)."""
    rest = [m for m in MEMORY_LEAD[1:] if m != lead and metric_values(records, m)]
    return rest[0] if rest else None


def _ratio(x: float | None, base_values: Sequence[float]) -> str:
    if x is None or not base_values or statistics.median(base_values) == 0:
        return "—"
    return f"{x / statistics.median(base_values):.2f}×"


def levers_table(records: Sequence[Mapping], keys: Sequence[str], number: int) -> Table | None:
    """Peak memory and throughput per memory lever, relative to the lever named "baseline"."""
    if "lever" not in keys:
        return None
    lever_records = [r for r in records if r.get("cell", {}).get("lever") is not None]
    if not lever_records:
        return None
    others = [k for k in keys if k != "lever"]
    shown = shown_keys(lever_records, others)
    mem = memory_metric(lever_records)
    second = secondary_memory_metric(lever_records, mem)
    caption = (f"Median over ok seeds. Memory = {MEMORY_LABELS[mem]} ({mem}); ratio = this lever / the lever "
               "named 'baseline' in the same cell (memory: < 1 saves; throughput: < 1 is slower).")
    if second:
        caption += f" Second memory column: {MEMORY_LABELS[second]} ({second})."
    table = Table("levers", f"Table {number}. Memory levers", caption,
                  [*shown, "lever", "ok runs", "peak memory (MiB)", "memory ratio",
                   *([f"{MEMORY_LABELS[second]} (MiB)"] if second else []), "samples/s",
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
            failed = not any(r["status"] == "ok" for r in lrecs)

            def shown_value(median, failed=failed):
                return TableCell("failed" if failed else fmt_cost(median) if median is not None else "—")

            second_cells = []
            if second:
                s = metric_values(lrecs, second)
                second_cells = [shown_value(statistics.median(s) if s else None)]
            table.rows.append([*(TableCell(column_value(other_key[others.index(k)])) for k in shown),
                               TableCell(str(lever), bold=lever == "baseline"), runs_cell(lrecs),
                               shown_value(m_med), TableCell(_ratio(m_med, base_mem)), *second_cells,
                               shown_value(t_med), TableCell(_ratio(t_med, base_tput))])
            table.row_runs.append([r["run_id"] for r in lrecs])
            table.row_labels.append(cell_label({**dict(zip(others, other_key)), "lever": lever}))
    return table
