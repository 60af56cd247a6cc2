"""The one table of metrics: direction, unit, regression threshold and report label of each.

Scoring, records, reports, regress and history all read this table; adding a metric is one row here
(plus the code that measures it). Pure data, no imports, so every layer may read it.

threshold: what `lorabench regress` calls a change beyond noise. ("abs", x): an absolute amount
(0.02 = 2 points of F1 or CER); ("rel", x): a fraction of the baseline value; None: not tracked.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Metric:
    name: str
    higher_is_better: bool
    unit: str  # "" for ratios in [0, 1] and other plain numbers
    label: str  # column header in reports
    threshold: tuple[str, float] | None
    group: str  # "quality" (from predictions), "cost" (memory / speed / time) or "training"
    in_report: bool = True  # a column of the report's quality or cost table
    in_history: bool = False  # shown by `lorabench history` without --metric
    timing: bool = False  # a speed or a duration: distorted when other processes share the machine


QUALITY = "quality"
COST = "cost"
TRAINING = "training"

METRICS: dict[str, Metric] = {m.name: m for m in (
    # quality, from harness.eval.metrics (same names as the keys `lorabench score --json` prints)
    Metric("cer", False, "", "CER", ("abs", 0.02), QUALITY, in_history=True),
    Metric("wer", False, "", "WER", ("abs", 0.02), QUALITY),
    Metric("field_f1", True, "", "field F1", ("abs", 0.02), QUALITY, in_history=True),
    Metric("field_anls", True, "", "field ANLS", ("abs", 0.02), QUALITY),
    Metric("exact_match", True, "", "exact match", ("abs", 0.02), QUALITY),
    Metric("json_valid_rate", True, "", "JSON valid", ("abs", 0.02), QUALITY),
    Metric("field_precision", True, "", "field P", ("abs", 0.02), QUALITY, in_report=False),
    Metric("field_recall", True, "", "field R", ("abs", 0.02), QUALITY, in_report=False),
    # training
    Metric("final_loss", False, "", "final loss", ("rel", 0.05), TRAINING, in_report=False, in_history=True),
    # memory. CPU: anonymous memory (RssAnon: heap, tensors) above the post-import baseline leads and
    # carries the 10% threshold. RSS also counts file-backed library pages, which moved by 12-21%
    # above imports (24-28% in total) between two checkouts of one commit: it stays as the secondary
    # figure with a threshold wider than that spread, so a real jump still shows and a checkout does not.
    Metric("peak_anon_above_baseline_mib", False, "MiB", "peak anon. memory above imports (MiB)", ("rel", 0.10),
           COST, in_history=True),
    Metric("peak_anon_mib", False, "MiB", "peak anon. memory (MiB)", ("rel", 0.10), COST, in_report=False),
    Metric("peak_rss_above_baseline_mib", False, "MiB", "peak RSS above imports (MiB)", ("rel", 0.30), COST),
    Metric("peak_rss_mib", False, "MiB", "peak RSS (MiB)", ("rel", 0.30), COST, in_history=True),
    Metric("gpu_max_allocated_mib", False, "MiB", "GPU max alloc (MiB)", ("rel", 0.10), COST),
    Metric("gpu_max_reserved_mib", False, "MiB", "GPU max reserved (MiB)", ("rel", 0.10), COST, in_report=False),
    # speed and time (the IQR of step time is jitter: less is better too)
    Metric("train_samples_per_s", True, "1/s", "samples/s", ("rel", 0.15), COST, in_history=True, timing=True),
    Metric("train_tokens_per_s", True, "1/s", "tokens/s", ("rel", 0.15), COST, timing=True),
    Metric("mfu", True, "", "MFU", None, COST, timing=True),
    Metric("wall_s", False, "s", "wall (s)", ("rel", 0.25), COST, timing=True),
    Metric("step_time_s_median", False, "s", "step time (s)", ("rel", 0.25), COST, in_report=False, timing=True),
    Metric("step_time_s_iqr", False, "s", "step time IQR (s)", None, COST, in_report=False, timing=True),
    Metric("eval_s", False, "s", "eval (s)", ("rel", 0.25), COST, in_report=False, timing=True),
)}

# Views of the table, for the places that need one aspect of it.
HIGHER_IS_BETTER = {m.name: m.higher_is_better for m in METRICS.values() if m.group == QUALITY}
QUALITY_METRICS = tuple(HIGHER_IS_BETTER)
METRIC_DIRECTION = {m.name: "higher" if m.higher_is_better else "lower" for m in METRICS.values()}
DEFAULT_THRESHOLDS = {m.name: m.threshold for m in METRICS.values() if m.threshold is not None}
QUALITY_COLUMNS = tuple((m.name, m.label) for m in METRICS.values() if m.group == QUALITY and m.in_report)
COST_COLUMNS = tuple((m.name, m.label) for m in METRICS.values() if m.group == COST and m.in_report)
TIMING_METRICS = frozenset(m.name for m in METRICS.values() if m.timing)
HISTORY_DEFAULT = tuple(m.name for m in METRICS.values() if m.in_history)
