"""A cell's name as a reader reads it: `peft · aligned`, `peft · aligned · control: lr ÷ 20`,
`swift · native (100 steps × 16)`. Tables, figures, the gallery and the exports all name cells here,
so one cell reads the same everywhere and the internal key form (`peft/aligned/-/-`) never shows.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

SEPARATOR = " · "
# Keys that are not part of a cell's name: a group spans its seeds, and the steps go in brackets.
_UNNAMED = ("seed", "train.steps", "control")


def _value(value) -> str:
    # "lr / 20" is an instruction in the suite file; in a name it reads as a division
    return str(value).replace(" / ", " ÷ ")


def cell_label(cell: Mapping, global_batch: int | None = None) -> str:
    """The name of a cell (its matrix keys; a missing or None value is left out).

    framework and alignment (or profile) lead, then any other key that is set: a memory lever by its
    value alone (`zero3`), a spec override as `max_length 448`; a negative control as
    `control: <what was changed>`; a cell that sets its own step count as `(N steps × G)` with G its
    global batch (samples per optimizer step) when known, since its steps are not the other cells' steps.
    """
    parts = [_value(cell[k]) for k in ("framework", "alignment") if cell.get(k) is not None]
    for key, value in cell.items():
        if key in ("framework", "alignment", *_UNNAMED) or value is None:
            continue
        parts.append(_value(value) if key == "lever" else f"{key.rsplit('.', 1)[-1]} {_value(value)}")
    if cell.get("control") is not None:
        parts.append(f"control: {_value(cell['control'])}")
    name = SEPARATOR.join(parts) or "(single cell)"
    steps = cell.get("train.steps")
    if steps is not None:
        name += f" ({steps} steps × {global_batch})" if global_batch else f" ({steps} steps)"
    return name


def global_batch(record: Mapping) -> int | None:
    """Samples per optimizer step over all processes, as the run read it back (None when unknown)."""
    value = (record.get("effective_settings") or {}).get("global_batch")
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0 else None


def group_label(key: tuple, keys: Sequence[str], group: Sequence[Mapping] = ()) -> str:
    """The name of a group of records (one cell over its seeds), from the group key."""
    batches = {b for b in (global_batch(r) for r in group) if b is not None}
    return cell_label(dict(zip(keys, key)), batches.pop() if len(batches) == 1 else None)


def record_label(record: Mapping) -> str:
    """The name of the cell a record belongs to (its seed left out)."""
    return cell_label(record.get("cell") or {}, global_batch(record))
