"""Run records as tables (CSV, Parquet, pandas) and as TensorBoard runs, after the fact.

Two tables, built from the records alone (nothing here runs during training):

runs   one row per record. Columns, in this order:
       run_id, label (the cell's name as the report writes it: `peft · aligned · control: lr ÷ 20`),
       suite, status, error (its last line), started_at, finished_at, wall_s, spec_hash, command;
       cell.<key> (framework, alignment, seed, lever, ...);
       spec.<dotted.key> (the whole spec flattened: spec.lora.r, spec.optim.lr, ...);
       metrics.<name> (every metric; an interval `<name>_ci` becomes metrics.<name>_ci_lo / _ci_hi);
       env.<dotted.key> (env.git_commit, env.git_dirty, env.packages.torch, env.dataset.checksum, ...).
       A list or object value (optim.betas, a list of LoRA targets, env.gpu) is its JSON text, so every
       column holds one kind of value.
steps  one row per logged optimizer step: run_id, step, loss, lr, grad_norm, tokens, samples,
       seconds, max_seq_len, image_tokens (join it to `runs` on run_id).

TensorBoard: one run directory per record, named by its run id, with train/loss, train/lr and
train/grad_norm per step, each final metric as final/<name>, and an hparams entry (the cell keys and
every spec key that differs between the exported runs, against the final metrics) for the HParams
comparison view.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from harness.analysis.cell_names import record_label
from harness.dotted import flatten
from harness.errors import UserError

FORMATS = ("csv", "parquet", "tensorboard")
IDENTITY_COLUMNS = ("run_id", "label", "suite", "status", "error", "started_at", "finished_at", "wall_s",
                    "spec_hash", "command")
STEP_COLUMNS = ("run_id", "step", "loss", "lr", "grad_norm", "tokens", "samples", "seconds",
                "max_seq_len", "image_tokens")
# Column groups of the runs table, in order; a column's group is its prefix.
_GROUPS = ("cell.", "spec.", "metrics.", "env.")
_STEP_SCALARS = {"loss": "train/loss", "lr": "train/lr", "grad_norm": "train/grad_norm"}


# ---------------------------------------------------------------------------------------------
# Tables as plain rows


def _flatten(prefix: str, value: Mapping, out: dict) -> None:
    """Columns `prefix.a.b`; a list is one JSON cell, an empty section no column."""
    for key, item in flatten(value, prefix + ".").items():
        if isinstance(item, Mapping):
            continue
        out[key] = json.dumps(item, sort_keys=True) if isinstance(item, (list, tuple)) else item


def _last_line(text: str | None) -> str | None:
    lines = [line for line in (text or "").splitlines() if line.strip()]
    return lines[-1].strip() if lines else None


def _metric_columns(metrics: Mapping) -> dict:
    out = {}
    for name, value in metrics.items():
        if name.endswith("_ci") and isinstance(value, (list, tuple)) and len(value) == 2:
            out[f"metrics.{name}_lo"], out[f"metrics.{name}_hi"] = value
        elif isinstance(value, (list, tuple, Mapping)):
            out[f"metrics.{name}"] = json.dumps(value, sort_keys=True)
        else:
            out[f"metrics.{name}"] = value
    return out


def run_row(record: Mapping) -> dict:
    """One record as one flat row of the runs table."""
    row = {key: record.get(key) for key in IDENTITY_COLUMNS}
    row["error"] = _last_line(record.get("error"))
    row["label"] = record_label(record)
    for key, value in (record.get("cell") or {}).items():
        row[f"cell.{key}"] = json.dumps(value, sort_keys=True) if isinstance(value, (list, dict)) else value
    _flatten("spec", record.get("spec") or {}, row)
    row.update(_metric_columns(record.get("metrics") or {}))
    _flatten("env", record.get("env") or {}, row)
    return row


def step_rows(record: Mapping) -> list[dict]:
    """The record's logged steps as rows of the steps table ([] when stripped, as in baselines)."""
    steps = (record.get("train") or {}).get("steps") or []
    return [{"run_id": record["run_id"], **{key: step.get(key) for key in STEP_COLUMNS[1:]}}
            for step in steps]


def ordered_columns(rows: Sequence[Mapping]) -> list[str]:
    """Every key of the rows: identity first, then cell, spec, metrics and env columns, each group
    in the order the keys first appear (framework, alignment and seed lead the cell keys)."""
    seen: dict[str, int] = {}
    for row in rows:
        for key in row:
            seen.setdefault(key, len(seen))
    lead = {"cell.framework": 0, "cell.alignment": 1, "cell.seed": 2}

    def rank(key: str) -> tuple:
        if key in IDENTITY_COLUMNS:
            return (0, IDENTITY_COLUMNS.index(key), 0)
        group = next((i for i, prefix in enumerate(_GROUPS) if key.startswith(prefix)), len(_GROUPS))
        return (1 + group, lead.get(key, 3), seen[key])

    return sorted(seen, key=rank)


def load(results_path: str | Path) -> list[dict]:
    """The records under a results directory, record file or bundle; a UserError when none."""
    from harness.results.store import load_records

    records = load_records(results_path)
    if not records:
        raise UserError(f"{results_path}: no run records")
    return records


def tables(records: Iterable[Mapping]) -> tuple[list[dict], list[dict]]:
    """(runs rows, steps rows) for a list of records."""
    records = list(records)
    return [run_row(r) for r in records], [row for r in records for row in step_rows(r)]


# ---------------------------------------------------------------------------------------------
# pandas, CSV, Parquet


def _pandas():
    try:
        import pandas
    except ImportError:
        raise UserError("this export needs pandas (and pyarrow for Parquet): pip install pandas pyarrow") from None
    return pandas


def _frame(rows: Sequence[Mapping], columns: Sequence[str]):
    pandas = _pandas()
    return pandas.DataFrame([{c: row.get(c) for c in columns} for row in rows], columns=list(columns))


def to_dataframe(results_path: str | Path, table: str = "runs"):
    """The runs table (one row per record) or, with table="steps", the long steps table, as a
    pandas DataFrame; columns as in this module's docstring."""
    runs, steps = tables(load(results_path))
    if table == "runs":
        return _frame(runs, ordered_columns(runs))
    if table == "steps":
        return _frame(steps, STEP_COLUMNS)
    raise ValueError(f"table must be 'runs' or 'steps', got {table!r}")


def write_csv(rows: Sequence[Mapping], columns: Sequence[str], path: Path) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({c: row.get(c) for c in columns})
    return path


def _one_type_per_column(frame):
    """Parquet stores one type per column: a column mixing kinds (a cell key that is a number in
    one suite and a name in another) is stored as text."""
    for column in frame.columns:
        if frame[column].dtype != object:
            continue
        kinds = {type(v) for v in frame[column] if v is not None and not (isinstance(v, float) and math.isnan(v))}
        if len(kinds) > 1:
            frame[column] = [None if v is None else str(v) for v in frame[column]]
    return frame


def write_parquet(rows: Sequence[Mapping], columns: Sequence[str], path: Path) -> Path:
    try:
        import pyarrow  # noqa: F401 (pandas' Parquet engine)
    except ImportError:
        raise UserError("Parquet export needs pyarrow: pip install pyarrow") from None
    _one_type_per_column(_frame(rows, columns)).to_parquet(path, index=False)
    return path


# ---------------------------------------------------------------------------------------------
# TensorBoard


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def hparam_columns(runs: Sequence[Mapping]) -> list[str]:
    """The cell keys, and every spec key whose value differs between the runs."""
    columns = ordered_columns(runs)
    cells = [c for c in columns if c.startswith("cell.")]
    varying = [c for c in columns if c.startswith("spec.")
               and len({json.dumps(r.get(c), sort_keys=True) for r in runs}) > 1]
    return ["status", *cells, *varying]


def _hparam_value(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return json.dumps(value, sort_keys=True)


def write_tensorboard(records: Sequence[Mapping], logdir: Path) -> list[Path]:
    """One TensorBoard run per record under `logdir`; returns the run directories."""
    try:
        from torch.utils.tensorboard import SummaryWriter
        from torch.utils.tensorboard.summary import hparams
    except ImportError as exc:
        raise UserError(f"TensorBoard export needs torch and tensorboard ({exc})") from None
    runs = [run_row(r) for r in records]
    names = hparam_columns(runs)
    written = []
    for record, row in zip(records, runs):
        run_dir = logdir / record["run_id"]
        run_dir.mkdir(parents=True, exist_ok=True)
        for old in run_dir.glob("events.out.tfevents.*"):  # a re-export replaces, never duplicates
            old.unlink()
        steps = step_rows(record)
        final = {f"final/{name}": v for name, v in (record.get("metrics") or {}).items()
                 if _number(v) is not None}
        last_step = max((s["step"] for s in steps if isinstance(s.get("step"), int)), default=0)
        with SummaryWriter(log_dir=str(run_dir)) as writer:
            for step in steps:
                for key, tag in _STEP_SCALARS.items():
                    value = _number(step.get(key))
                    if value is not None and isinstance(step.get("step"), int):
                        writer.add_scalar(tag, value, step["step"])
            for tag, value in final.items():
                writer.add_scalar(tag, value, last_step)
            hparam_dict = {name: _hparam_value(row.get(name)) for name in names}
            for summary in hparams({k: v for k, v in hparam_dict.items() if v is not None}, final):
                writer.file_writer.add_summary(summary, last_step)
        written.append(run_dir)
    return written


# ---------------------------------------------------------------------------------------------
# The export command's work


def default_out_dir(results_path: str | Path) -> Path:
    """`<results dir>/export`, or `<name>-export` next to a record or bundle file."""
    path = Path(results_path)
    return path / "export" if path.is_dir() else path.with_name(f"{path.stem}-export")


def export(results_path: str | Path, formats: Sequence[str], out_dir: str | Path | None = None) -> list[Path]:
    """Write the tables / TensorBoard runs of the records under `results_path`; returns the paths
    (for TensorBoard, its log directory `<out>/tensorboard`)."""
    for fmt in formats:
        if fmt not in FORMATS:
            raise UserError(f"unknown export format {fmt!r} (valid: {', '.join(FORMATS)})")
    records = load(results_path)
    out = Path(out_dir) if out_dir is not None else default_out_dir(results_path)
    out.mkdir(parents=True, exist_ok=True)
    runs, steps = tables(records)
    run_columns = ordered_columns(runs)
    written: list[Path] = []
    if "csv" in formats:
        written += [write_csv(runs, run_columns, out / "runs.csv"),
                    write_csv(steps, STEP_COLUMNS, out / "steps.csv")]
    if "parquet" in formats:
        written += [write_parquet(runs, run_columns, out / "runs.parquet"),
                    write_parquet(steps, STEP_COLUMNS, out / "steps.parquet")]
    if "tensorboard" in formats:
        write_tensorboard(records, out / "tensorboard")
        written.append(out / "tensorboard")
    return written
