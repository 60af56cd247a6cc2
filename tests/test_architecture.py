"""The import rules that keep the layout honest, checked on the source (no imports executed).

- adapters/ may use only the prompt contract (harness.chat), the architecture map (harness.archs), errors
  the LoRA target presets (harness.lora_targets) and the typed spec they are given (harness.run_spec):
  an adapter must never reach into the runner, the evaluation or the results.
- the evaluation never imports an adapter or a framework's training code: it is framework-neutral.
- results/ (schema, store, statistics, metric table) depends on nothing above it.
- datasets/ is not a Python package: `import datasets` must stay Hugging Face's.
"""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

ADAPTER_MAY_IMPORT = {"harness.archs", "harness.chat", "harness.errors", "harness.lora_targets", "harness.run_spec"}


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
    return names


def _modules(folder: str):
    return sorted((ROOT / folder).rglob("*.py"))


def _stray_adapter_imports(path: Path) -> set[str]:
    harness = {n for n in _imports(path) if n.startswith("harness")}
    allowed = {n for n in harness if any(n == a or n.startswith(a + ".") for a in ADAPTER_MAY_IMPORT)}
    # a parent package of an allowed module ("harness.run") is recorded by `from ... import`: fine
    return {n for n in harness - allowed if not any(a.startswith(n + ".") for a in ADAPTER_MAY_IMPORT)}


def test_adapters_import_only_the_prompt_contract_errors_and_distributed_helpers():
    for path in _modules("adapters"):
        stray = _stray_adapter_imports(path)
        assert not stray, f"{path.relative_to(ROOT)} imports {sorted(stray)}"


def test_evaluation_is_framework_neutral():
    for path in _modules("harness/eval"):
        bad = {n for n in _imports(path) if n.split(".")[0] in ("adapters", "swift", "deepspeed", "trl")}
        assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"


def test_results_depend_on_nothing_above_them():
    for path in _modules("harness/results"):
        bad = {n for n in _imports(path)
               if n.startswith(("harness.run", "harness.analysis", "harness.eval", "harness.tinymodel", "adapters"))}
        assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"


def test_datasets_is_data_not_a_package():
    assert not (ROOT / "datasets" / "__init__.py").exists()
    assert not list((ROOT / "datasets").rglob("*.py"))


def test_the_rule_checker_catches_a_stray_import(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("from harness.run.runner import run_suite\nfrom harness.chat import build_prompt\n")
    assert _stray_adapter_imports(bad) == {"harness.run.runner", "harness.run.runner.run_suite"}
