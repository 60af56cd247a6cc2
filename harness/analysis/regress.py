"""Noise-aware comparison of current results against a baseline: better / same / worse per metric.

A cell is matched by its cell keys without `seed` (seeds are the repeats). For each tracked metric:

    base, cur   = mean over the ok seeds on each side
    bad         = cur - base when lower is better, base - cur when higher is better  (> 0: worse)
    threshold   = DEFAULT_THRESHOLDS[metric]: an absolute amount ("abs") or a fraction of |base| ("rel")
    noise       = max(NOISE_STD_FACTOR x pooled std over the seeds of both sides,
                      the larger mean bootstrap-CI half-width `<metric>_ci` of the two sides)
    worse       when bad  > threshold and bad  > noise
    better      when -bad > threshold and -bad > noise
    same        otherwise

A speed or duration (TIMING_METRICS) measured while other processes used the machine (the record's
`load.loaded`, harness.run.machine_load) on either side is not compared: its verdict is "loaded", which
is not a regression, because load on a 2-core machine changes speed by 2-36x and says nothing of the code.

With one seed per side the spread is 0, and the records' bootstrap interval over test samples is what
keeps sampling noise from being called a regression. A cell of the baseline with no ok run in the
current results, or a seed that was ok in the baseline and is not ok now, is "missing" (a
regression); a cell only in the current results is "new" (not a regression).
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Mapping, Sequence

from harness.errors import UserError
from harness.results.metric_table import DEFAULT_THRESHOLDS, METRIC_DIRECTION, QUALITY_METRICS, TIMING_METRICS
from harness.results.store import cell_keys, ci_half_widths, env_fingerprint_diff, metric_values, timed_under_load
from harness.analysis.cell_names import cell_label

NOISE_STD_FACTOR = 2.0
VERDICTS = ("better", "same", "worse", "missing", "new", "loaded")
REGRESSION_VERDICTS = ("worse", "missing")


def parse_thresholds(items: Sequence[str] | None) -> dict[str, tuple[str, float]]:
    """The default table with `METRIC=AMOUNT` overrides applied (the amount keeps the metric's kind:
    absolute for quality metrics, a fraction of the baseline for the others). A metric with a
    direction but no default (e.g. mfu) becomes tracked, relative. Bad items are UserErrors."""
    table = dict(DEFAULT_THRESHOLDS)
    for item in items or ():
        name, sep, value = item.partition("=")
        name = name.strip()
        if not sep:
            raise UserError(f"--threshold {item!r}: expected METRIC=FRACTION, e.g. field_f1=0.03")
        if name not in METRIC_DIRECTION:
            raise UserError(f"--threshold {item!r}: unknown metric {name!r}; known: "
                            + ", ".join(sorted(METRIC_DIRECTION)))
        try:
            amount = float(value)
        except ValueError:
            raise UserError(f"--threshold {item!r}: {value!r} is not a number") from None
        if not (amount >= 0 and math.isfinite(amount)):
            raise UserError(f"--threshold {item!r}: the amount must be >= 0")
        kind = table.get(name, ("abs" if name in QUALITY_METRICS else "rel", 0))[0]
        table[name] = (kind, amount)
    return table


def _cell_id(cell: Mapping) -> str:
    return json.dumps({k: v for k, v in cell.items() if k != "seed"}, sort_keys=True)


def _cell_label(cell: Mapping, keys: Sequence[str]) -> str:
    """The cell's name as every report writes it (its seed left out: seeds are the repeats)."""
    return cell_label({k: cell.get(k) for k in keys if k != "seed"})


def _pooled_std(a: Sequence[float], b: Sequence[float]) -> float:
    dof = (len(a) - 1) + (len(b) - 1)
    if dof <= 0:
        return 0.0
    ss = sum((len(x) - 1) * statistics.variance(x) for x in (a, b) if len(x) > 1)
    return math.sqrt(ss / dof)


def compare_metric(metric: str, base_records: Sequence[Mapping], cur_records: Sequence[Mapping],
                   threshold: tuple[str, float]) -> dict | None:
    """One comparison row for `metric` in one cell; None when the baseline has no value for it."""
    base, cur = metric_values(base_records, metric), metric_values(cur_records, metric)
    if not base:
        return None
    row = {"metric": metric, "n_baseline": len(base), "n_current": len(cur),
           "baseline": statistics.fmean(base), "current": None, "ratio": None, "delta": None,
           "threshold": None, "noise": None, "verdict": "missing",
           "note": "metric absent from the current ok runs"}
    if not cur:
        return row
    b_mean, c_mean = row["baseline"], statistics.fmean(cur)
    kind, amount = threshold
    limit = amount if kind == "abs" else amount * abs(b_mean)
    ci = [statistics.fmean(w) for w in (ci_half_widths(base_records, metric),
                                         ci_half_widths(cur_records, metric)) if w]
    noise = max(NOISE_STD_FACTOR * _pooled_std(base, cur), max(ci, default=0.0))
    bad = (c_mean - b_mean) if METRIC_DIRECTION.get(metric) == "lower" else (b_mean - c_mean)
    if bad > limit and bad > noise:
        verdict = "worse"
    elif -bad > limit and -bad > noise:
        verdict = "better"
    else:
        verdict = "same"
    note = f"threshold {amount:g}{' abs' if kind == 'abs' else ' rel'}"
    loaded = [side for side, recs in (("baseline", base_records), ("current", cur_records))
              if any(timed_under_load(r) for r in recs)]
    if metric in TIMING_METRICS and loaded and verdict != "same":
        verdict, note = "loaded", f"not compared: timed under load ({' and '.join(loaded)})"
    row.update(current=c_mean, ratio=(c_mean / b_mean) if b_mean else None, delta=c_mean - b_mean,
               threshold=limit, noise=noise, verdict=verdict, note=note)
    return row


def _distinct_envs(records: Sequence[Mapping]) -> list[dict]:
    seen, out = set(), []
    for r in records:
        env = r.get("env") or {}
        key = json.dumps(env_fingerprint_diff(env, {}), sort_keys=True)
        if key not in seen:
            seen.add(key)
            out.append(env)
    return out


def env_warnings(baseline: Sequence[Mapping], current: Sequence[Mapping]) -> list[str]:
    """One line per environment difference between the baseline's and the current runs."""
    lines: list[str] = []
    for env_b in _distinct_envs(baseline):
        for env_c in _distinct_envs(current):
            for diff in env_fingerprint_diff(env_b, env_c):
                line = f"environment differs (baseline != current): {diff}"
                if line not in lines:
                    lines.append(line)
    return lines


def compare_to_baseline(baseline: Sequence[Mapping], current: Sequence[Mapping],
            thresholds: Mapping[str, tuple[str, float]] | None = None) -> dict:
    """{"regressed": bool, "rows": [...], "warnings": [...]} for two lists of records.

    Rows carry: cell (dict, no seed), cell_label, metric (None for a whole-cell row), baseline,
    current (means over ok seeds), ratio (current/baseline), delta, threshold and noise (absolute,
    in the metric's unit), n_baseline, n_current, verdict (one of VERDICTS), note.
    """
    thresholds = dict(DEFAULT_THRESHOLDS if thresholds is None else thresholds)
    keys = cell_keys([*baseline, *current])
    by_cell_b: dict[str, list[Mapping]] = {}
    by_cell_c: dict[str, list[Mapping]] = {}
    for r in baseline:
        by_cell_b.setdefault(_cell_id(r["cell"]), []).append(r)
    for r in current:
        by_cell_c.setdefault(_cell_id(r["cell"]), []).append(r)
    warnings = env_warnings([r for r in baseline if r["status"] == "ok"] or baseline,
                            [r for r in current if r["status"] == "ok"] or current)
    suites_b, suites_c = {r["suite"] for r in baseline}, {r["suite"] for r in current}
    if suites_b != suites_c:
        warnings.append(f"suites differ: baseline {sorted(suites_b)} != current {sorted(suites_c)}")
    rows: list[dict] = []

    def whole_cell(cell, label, verdict, note, nb, nc):
        rows.append({"cell": cell, "cell_label": label, "metric": None, "baseline": None,
                     "current": None, "ratio": None, "delta": None, "threshold": None, "noise": None,
                     "n_baseline": nb, "n_current": nc, "verdict": verdict, "note": note})

    for cid in sorted(set(by_cell_b) | set(by_cell_c), key=lambda c: (_cell_label(json.loads(c), keys), c)):
        b_recs, c_recs = by_cell_b.get(cid, []), by_cell_c.get(cid, [])
        cell = json.loads(cid)
        label = _cell_label(cell, keys)
        b_ok = [r for r in b_recs if r["status"] == "ok"]
        c_ok = [r for r in c_recs if r["status"] == "ok"]
        if not b_recs:
            whole_cell(cell, label, "new", "cell not in the baseline", 0, len(c_ok))
            continue
        if not b_ok:
            warnings.append(f"baseline has no ok run for cell {label}: not compared")
            continue
        if not c_recs:
            whole_cell(cell, label, "missing", "cell not in the current results", len(b_ok), 0)
            continue
        if not c_ok:
            statuses = ", ".join(sorted({r["status"] for r in c_recs}))
            whole_cell(cell, label, "missing", f"no ok run in the current results ({statuses})",
                       len(b_ok), 0)
            continue
        ok_seeds_b = {r["cell"].get("seed") for r in b_ok}
        broken = sorted((r["cell"].get("seed"), r["status"]) for r in c_recs
                        if r["status"] != "ok" and r["cell"].get("seed") in ok_seeds_b
                        and r["cell"].get("seed") not in {x["cell"].get("seed") for x in c_ok})
        for seed, status in broken:
            whole_cell(cell, label, "missing", f"seed {seed} was ok in the baseline, now {status}",
                       len(b_ok), len(c_ok))
        for metric in thresholds:
            row = compare_metric(metric, b_ok, c_ok, thresholds[metric])
            if row:
                rows.append({"cell": cell, "cell_label": label, **row})
    regressed = any(r["verdict"] in REGRESSION_VERDICTS for r in rows)
    return {"regressed": regressed, "rows": rows, "warnings": warnings}


def _fmt(x: float | None, digits: int = 4) -> str:
    if x is None:
        return "-"
    return f"{x:.{digits}g}" if abs(x) >= 1e4 or (x != 0 and abs(x) < 1e-3) else f"{x:.{digits}f}"


def format_table(result: Mapping) -> str:
    """The rows as an aligned plain-text table plus a one-line verdict."""
    header = ("cell", "metric", "baseline", "current", "ratio", "noise", "threshold", "verdict")
    lines = [header]
    for r in result["rows"]:
        lines.append((r["cell_label"], r["metric"] or "(cell)", _fmt(r["baseline"]), _fmt(r["current"]),
                      _fmt(r["ratio"], 3), _fmt(r["noise"]), _fmt(r["threshold"]),
                      r["verdict"].upper() if r["verdict"] in REGRESSION_VERDICTS else r["verdict"])
                     + ((f"  ({r['note']})",) if r["metric"] is None or r["verdict"] == "missing" else ()))
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(header))]
    text = ["  ".join(str(v).ljust(w) for v, w in zip(line, widths)).rstrip()
            + ("".join(line[len(header):])) for line in lines]
    counts = {v: sum(r["verdict"] == v for r in result["rows"]) for v in VERDICTS}
    summary = ", ".join(f"{n} {v}" for v, n in counts.items() if n)
    text.append("")
    text.append(("REGRESSED: " if result["regressed"] else "no regression: ") + (summary or "nothing compared"))
    return "\n".join(text)


def _md(text: str) -> str:
    """Text safe inside a markdown table cell."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def _markdown_rows(rows: Sequence[Mapping]) -> list[str]:
    lines = ["| cell | metric | baseline | current | ratio | noise | threshold | verdict |",
             "|---|---|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        verdict = f"**{r['verdict'].upper()}**" if r["verdict"] in REGRESSION_VERDICTS else r["verdict"]
        if r["metric"] is None or r["verdict"] == "missing":
            verdict += f" ({_md(r['note'])})"
        lines.append(f"| {_md(r['cell_label'])} | {_md(r['metric'] or '(cell)')} | {_fmt(r['baseline'])} | "
                     f"{_fmt(r['current'])} | {_fmt(r['ratio'], 3)} | {_fmt(r['noise'])} | "
                     f"{_fmt(r['threshold'])} | {verdict} |")
    return lines


def format_markdown(result: Mapping) -> str:
    """The comparison as markdown for a CI job summary: a verdict line, the rows that are not
    "same" as a table, every row in a collapsed table below, and the environment warnings."""
    counts = {v: sum(r["verdict"] == v for r in result["rows"]) for v in VERDICTS}
    summary = ", ".join(f"{n} {v}" for v, n in counts.items() if n) or "nothing compared"
    head = "REGRESSED" if result["regressed"] else "no regression"
    lines = [f"### lorabench regress: {head} ({summary})", ""]
    changed = [r for r in result["rows"] if r["verdict"] != "same"]
    if changed:
        lines += _markdown_rows(changed) + [""]
    else:
        lines += ["Every metric is within its threshold or the noise.", ""]
    if result["rows"]:
        lines += ["<details><summary>all " + str(len(result["rows"])) + " comparisons</summary>", ""]
        lines += _markdown_rows(result["rows"]) + ["", "</details>", ""]
    if result.get("warnings"):
        lines += ["Warnings:", ""] + [f"- {_md(w)}" for w in result["warnings"]] + [""]
    return "\n".join(lines).rstrip() + "\n"


# ---------------------------------------------------------------------------------------------
# History: metrics over commits


def commit_order(records: Sequence[Mapping]) -> list[tuple[str, bool]]:
    """(git commit, dirty) pairs in the order their first run started; a missing commit is
    "unknown". Dirty runs of a commit are their own point: the code was not that commit."""
    first: dict[tuple[str, bool], str] = {}
    for r in records:
        env = r.get("env") or {}
        key = (env.get("git_commit") or "unknown", bool(env.get("git_dirty")))
        started = r.get("started_at") or ""
        if key not in first or started < first[key]:
            first[key] = started
    return sorted(first, key=lambda k: (first[k], k))


def commit_label(commit: str, dirty: bool) -> str:
    return commit[:10] + ("+dirty" if dirty else "")


def history_table(records: Sequence[Mapping], metric: str) -> dict:
    """{"commits": [label], "dates": [first started_at], "cells": [label],
    "values": {cell label: [mean over ok seeds at each commit, or None]}} for one metric."""
    ok = [r for r in records if r.get("status") == "ok"]
    order = commit_order(ok)
    keys = cell_keys(ok)
    cells = sorted({_cell_label(r["cell"], keys) for r in ok})
    values: dict[str, list[float | None]] = {c: [] for c in cells}
    dates = []
    for commit, dirty in order:
        at = [r for r in ok if ((r.get("env") or {}).get("git_commit") or "unknown",
                                bool((r.get("env") or {}).get("git_dirty"))) == (commit, dirty)]
        dates.append(min(r.get("started_at") or "" for r in at))
        for c in cells:
            v = metric_values([r for r in at if _cell_label(r["cell"], keys) == c], metric)
            values[c].append(statistics.fmean(v) if v else None)
    return {"metric": metric, "commits": [commit_label(c, d) for c, d in order], "dates": dates,
            "cells": cells, "values": values}


def format_history(table: Mapping) -> str:
    header = ["commit", "first run", *table["cells"]]
    lines = [header]
    for i, commit in enumerate(table["commits"]):
        lines.append([commit, table["dates"][i],
                      *(_fmt(table["values"][c][i]) for c in table["cells"])])
    widths = [max(len(str(line[j])) for line in lines) for j in range(len(header))]
    return "\n".join("  ".join(str(v).ljust(w) for v, w in zip(line, widths)).rstrip() for line in lines)
