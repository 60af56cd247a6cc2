"""Suite files: defaults + a matrix of cells, each cell a run spec with a stable hash.

    # lorabench run harness/suites/default.yaml
    name: default
    defaults: {task: extract, train: {steps: 60}}     # any spec keys (harness.config.spec.DEFAULTS)
    matrix: {framework: [peft, swift], seed: [0, 1]}   # product of these; keys are dotted spec keys
    include: [{framework: swift, alignment: native}]   # extra cells (merged over the matrix keys' first values)
    exclude: [{framework: torch, alignment: native}]   # cells to drop (all given keys must match)
    cells: {alignment=native: {train: {steps: 30}}}    # overrides for cells where KEY=VALUE holds

A cell may name itself for the report with `lever: NAME` (a memory lever) or `control: NAME` (a
negative control: e.g. `{framework: torch, control: "lr / 20", optim.lr: 1.0e-4}` is the aligned
torch cell with a learning rate 20 times too small, which the report must find significantly worse).

`seed` is shorthand for train.seed (the data order follows it: train.data_seed = seed).
"""

from __future__ import annotations

import dataclasses
import itertools
from pathlib import Path

from harness.errors import UserError
from harness.run_spec import Spec
from harness.config.spec import deep_update, load_yaml, make_spec, nested, parse_set, spec_hash
from harness.dotted import get

SUITE_KEYS = ("name", "description", "defaults", "matrix", "include", "exclude", "cells", "lanes")
SHORTHANDS = {"seed": ("train.seed", "train.data_seed")}
# Keys that name a cell for the report, not spec keys: `lever` (a memory lever) and `control`
# (a negative control: an aligned cell with one deliberately harmful setting, named by the value).
META_KEYS = ("lever", "control")


@dataclasses.dataclass(frozen=True)
class Cell:
    key: dict  # the matrix values that name this cell, e.g. {"framework": "peft", "seed": 0}
    spec: Spec
    spec_hash: str
    run_id: str


def cell_override(cell: dict) -> dict:
    override: dict = {}
    for key, value in cell.items():
        if key in META_KEYS:
            continue
        for dotted in SHORTHANDS.get(key, (key,)):
            override = deep_update(override, nested(dotted, value))
    return override


def _matches(cell: dict, condition: dict) -> bool:
    return all(str(cell.get(k)) == str(v) for k, v in condition.items())


def load_suite(path: str | Path, only: list[str] | None = None, overrides: list[str] | None = None):
    """(name, [Cell]) for a suite file; `only` filters cells by KEY=VALUE on their matrix keys."""
    path = Path(path)
    doc = load_yaml(path)
    for key in doc:
        if key not in SUITE_KEYS:
            raise UserError(f"{path}: unknown suite key {key!r} (valid: {', '.join(SUITE_KEYS)})")
    name = doc.get("name") or path.stem
    defaults = doc.get("defaults") or {}
    extra = parse_set(overrides or [], source="--set")
    base = make_spec(defaults, extra, source=str(path))
    matrix = doc.get("matrix") or {}
    if not isinstance(matrix, dict):
        raise UserError(f"{path}: matrix must be a mapping of key -> list of values")
    for key, values in matrix.items():
        if not isinstance(values, list) or not values:
            raise UserError(f"{path}: matrix.{key} must be a non-empty list")
    keys = list(matrix)
    cells = [dict(zip(keys, combo)) for combo in itertools.product(*(matrix[k] for k in keys))] if keys else [{}]
    for inc in doc.get("include") or []:
        cells.append({**{k: matrix[k][0] for k in keys}, **inc})
    cells = [c for c in cells if not any(_matches(c, ex) for ex in doc.get("exclude") or [])]
    conditional = doc.get("cells") or {}
    filters = [f.split("=", 1) for f in only or []]
    for f in filters:
        if len(f) != 2:
            raise UserError(f"--only expects KEY=VALUE, got {'='.join(f)!r}")
    out, seen = [], set()
    for cell in cells:
        if filters and not all(str(cell.get(k, _lookup(base, k))) == v for k, v in filters):
            continue
        specific = [ov for cond, ov in conditional.items() if _matches(cell, dict([cond.split("=", 1)]))]
        # --set comes last: a command-line override holds for every cell, even one the suite sets itself
        spec = make_spec(base, *specific, cell_override(cell), extra, source=f"{path} cell {cell}")
        h = spec_hash(spec)
        if h in seen:
            continue
        seen.add(h)
        out.append(Cell(key=cell, spec=spec, spec_hash=h, run_id=f"{name}-{h[:10]}"))
    return name, out


def parse_lanes(value, source: str) -> int | str:
    """A suite's `lanes` (or `--lanes`): a positive number of cells run at a time, or "auto"
    (harness.run.lanes). Not part of any spec: where a cell runs does not change what it computes,
    and its record says how it was timed."""
    if value == "auto":
        return value
    try:
        lanes = int(value)
    except (TypeError, ValueError):
        lanes = 0
    if lanes < 1 or str(value).strip() not in (str(lanes), f"{lanes}.0"):
        raise UserError(f"{source}: lanes must be a positive whole number or 'auto', got {value!r}")
    return lanes


def suite_lanes(path: str | Path) -> int | str:
    """The suite file's `lanes` (1 when it does not say)."""
    return parse_lanes(load_yaml(Path(path)).get("lanes", 1), f"{path}: lanes")


def _lookup(spec: Spec, dotted: str):
    try:
        return get(spec, SHORTHANDS.get(dotted, (dotted,))[0])
    except (KeyError, TypeError):
        return None

