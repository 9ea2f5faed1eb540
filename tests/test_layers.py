"""The layers: bench -> sweeps -> analysis -> trainables, except that sweeps and
analysis do not import each other (both use trainables.contract); only the CLI
(sweeps/cli.py) calls analysis, to build a report. trainables imports neither, and
the contract imports neither Ray nor torch."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def imports(path: Path, module_level_only: bool) -> list[tuple[int, str]]:
    """(line, imported module) of every import in a file; with `module_level_only`,
    those that run when the module is imported (not inside a function)."""
    tree = ast.parse(path.read_text(), str(path))
    found = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import) and not (module_level_only and in_function):
                found.extend((child.lineno, alias.name) for alias in child.names)
            elif isinstance(child, ast.ImportFrom) and child.level == 0 and not (module_level_only and in_function):
                found.append((child.lineno, child.module or ""))
            visit(child, inner)

    visit(tree, False)
    return found


def offenders(package: str, forbidden: tuple[str, ...], module_level_only: bool, allowed: tuple[str, ...] = ()):
    out = []
    for path in sorted((REPO / package).rglob("*.py")):
        if path.relative_to(REPO).as_posix() in allowed:
            continue
        for line, name in imports(path, module_level_only):
            if name.split(".")[0] in forbidden:
                out.append(f"{path.relative_to(REPO)}:{line}: imports {name}")
    return out


def test_trainables_imports_neither_sweeps_nor_analysis():
    assert offenders("trainables", ("sweeps", "analysis", "bench"), module_level_only=False) == []


def test_analysis_does_not_import_sweeps():
    assert offenders("analysis", ("sweeps", "bench"), module_level_only=False) == []


def test_sweeps_imports_analysis_only_in_the_cli_and_never_at_module_level():
    assert offenders("sweeps", ("analysis", "bench"), module_level_only=True) == []
    assert offenders("sweeps", ("analysis", "bench"), module_level_only=False, allowed=("sweeps/cli.py",)) == []


def test_the_check_sees_a_module_level_import(tmp_path):
    # The checker itself: a module-level import is found, one inside a function is not.
    bad = tmp_path / "bad.py"
    bad.write_text("import analysis.report\nif True:\n    from analysis import collect\n"
                   "def f():\n    import analysis.figures\n")
    assert [name for _, name in imports(bad, module_level_only=True)] == ["analysis.report", "analysis"]
    assert len(imports(bad, module_level_only=False)) == 3


@pytest.mark.parametrize("modules, absent", [
    (["trainables.contract"], ("torch", "ray", "pandas", "sweeps", "analysis")),
    (["sweeps.schema", "sweeps.planner", "sweeps.tuneconfig", "sweeps.runner", "sweeps.status", "sweeps.submit",
      "sweeps.cluster", "sweeps.cli"], ("analysis",)),
    (["analysis.collect", "analysis.report", "analysis.studies"], ("sweeps",)),
])
def test_importing_a_layer_loads_nothing_above_it(modules, absent):
    code = (f"import sys\nimport {', '.join(modules)}\n"
            f"print(sorted({{m.split('.')[0] for m in sys.modules}} & {set(absent)!r}))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]", f"importing {modules} loaded {out.stdout.strip()}"
