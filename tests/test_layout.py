"""How the package is put together: modules that import each other in one direction only."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import raylaw

PACKAGE = Path(__file__).resolve().parents[1] / "raylaw"


def _runtime_nodes(tree: ast.AST) -> list[ast.AST]:
    """Every node of ``tree`` except what sits under ``if TYPE_CHECKING:`` (type hints only)."""
    out, todo = [], [tree]
    while todo:
        node = todo.pop()
        out.append(node)
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            todo += node.orelse
            continue
        todo += ast.iter_child_nodes(node)
    return out


def raylaw_imports() -> dict[str, set[str]]:
    """Each raylaw module's raylaw imports when it runs, function-level ones included (those
    for type hints alone, under ``TYPE_CHECKING``, are not imports at run time)."""
    modules = {".".join(p.relative_to(PACKAGE.parent).with_suffix("").parts)
               .removesuffix(".__init__"): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for m, path in modules.items():
        for node in _runtime_nodes(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("raylaw"):
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            graph[m] |= {n for n in names if n in modules and n not in (m, "raylaw")}
    return graph


def test_raylaw_modules_import_each_other_without_cycles():
    graph = raylaw_imports()
    assert graph["raylaw.law"] and graph["raylaw.sweep"]  # the graph was read
    done: set[str] = set()

    def visit(m: str, path: list[str]) -> None:
        for n in sorted(graph[m]):
            assert n not in path, f"import cycle: {' -> '.join(path[path.index(n):] + [n])}"
            if n not in done:
                visit(n, path + [n])
        done.add(m)

    for m in sorted(graph):
        visit(m, [m])


def test_a_trials_process_imports_no_optuna_scipy_or_pandas():
    """Ray starts a process per trial and per Train worker: what running a trainable imports is
    paid every time (``raylaw`` loads its public names on first use). The names still work."""
    code = ("import sys, raylaw, raylaw.workers, raylaw.trainables.lm, tests.synthetic\n"
            "print(sorted(m for m in ('optuna', 'scipy', 'pandas') if m in sys.modules))\n"
            "from raylaw import LawSampler, ScalingLaw, run_sweep\n"
            "print(LawSampler.__module__, ScalingLaw.__module__, run_sweep.__module__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=PACKAGE.parent).stdout.splitlines()
    assert out == ["[]", "raylaw.sampler raylaw.law raylaw.sweep"]
    assert set(raylaw.__all__) <= set(dir(raylaw))
    assert all(getattr(raylaw, name).__name__ == name for name in raylaw.__all__)
    assert len(dir(raylaw)) == len(set(dir(raylaw)))
