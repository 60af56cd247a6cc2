"""The methods section (model, data, hardware, software, spec, commands) and one-line error texts."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import yaml

from harness.dotted import flatten


def unique(values: Iterable[Any]) -> list[Any]:
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
    flat_specs = [flatten(r.get("spec") or {}) for r in records]
    all_keys = sorted(set().union(*flat_specs)) if flat_specs else []
    constant, varying = {}, {}
    for k in all_keys:
        values = unique(s.get(k, "<absent>") for s in flat_specs)
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
        "models": unique({"name": (e.get("model") or {}).get("name"),
                           "checksum": (e.get("model") or {}).get("checksum")} for e in envs),
        "datasets": unique({"name": (e.get("dataset") or {}).get("name"),
                             "checksum": (e.get("dataset") or {}).get("checksum")} for e in envs),
        "hardware": unique({"cpu": e.get("cpu"), "cores": e.get("cores"), "gpu": e.get("gpu") or [],
                             "torch_threads": e.get("torch_threads"), "platform": e.get("platform"),
                             "matmul_peak_gflops": e.get("matmul_peak_gflops")} for e in envs),
        "python": unique(e.get("python") for e in envs),
        "packages": dict(sorted(packages.items())),
        "git": unique({"commit": e.get("git_commit"), "dirty": e.get("git_dirty")} for e in envs),
        "seeds": sorted({r.get("cell", {}).get("seed") for r in records} - {None}, key=str),
        "spec_constant": constant,
        "spec_varying": varying,
        "commands": unique(r.get("command") for r in records),
        "suites": unique(r.get("suite") for r in records),
    }


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
