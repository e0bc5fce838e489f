"""The light commands start without torch and without any method: --help, sweep status,
aggregate, table and plot (checked on sys.modules after each, in a fresh interpreter)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

FIX = Path(__file__).resolve().parent / "fixtures" / "fake_sweep" / "main"

CHECK = """
import sys
from hpcdd.cli import main
try:
    rc = main({argv!r})
except SystemExit as e:
    rc = e.code
heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'torchvision', 'submitit')
               or m in ('hpcdd.run', 'hpcdd.prereq', 'hpcdd.evaluate', 'hpcdd.artefact', 'hpcdd.imagegrid')
               or m.startswith(('hpcdd.distill', 'hpcdd.select', 'hpcdd.nets', 'hpcdd.data', 'hpcdd.generative')))
print('HEAVY', heavy, file=sys.stderr)
sys.exit(rc)
"""


def loaded(argv: list[str], cwd: Path) -> list[str]:
    proc = subprocess.run([sys.executable, "-c", CHECK.format(argv=argv)], capture_output=True, text=True,
                          cwd=cwd)
    assert proc.returncode == 0, proc.stderr
    line = next(l for l in proc.stderr.splitlines() if l.startswith("HEAVY "))
    return eval(line[len("HEAVY "):])  # a list literal printed by the child


@pytest.fixture(scope="module")
def grid(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("light")
    path = d / "g.yaml"
    path.write_text(yaml.safe_dump({"name": "light", "base": {"dataset": "digits", "ipc": 1},
                                    "grid": {"method": ["dm", "random"]}, "seeds": 3}))
    return path


@pytest.mark.parametrize("argv", [["--help"], ["sweep", "--help"], ["distill", "--help"]])
def test_help_imports_nothing_heavy(argv, tmp_path):
    assert loaded(argv, tmp_path) == []


def test_sweep_status_and_dry_run_import_nothing_heavy(grid, tmp_path):
    assert loaded(["sweep", "status", str(grid), "--out", str(tmp_path / "runs")], tmp_path) == []
    assert loaded(["sweep", "launch", str(grid), "--out", str(tmp_path / "runs"), "--cluster", "local",
                   "--dry-run"], tmp_path) == []


def test_report_commands_import_no_torch(tmp_path):
    csv = tmp_path / "r.csv"
    assert loaded(["aggregate", str(FIX), "-o", str(csv)], tmp_path) == []
    assert loaded(["table", str(csv), "--protocol", "dc1000", "--where", "dataset=fashionmnist"], tmp_path) == []
    assert loaded(["plot", str(csv), "--protocol", "dc1000", "--where", "dataset=fashionmnist",
                   "-o", str(tmp_path / "p")], tmp_path) == []


def import_graph(package: Path) -> dict[str, set[str]]:
    """hpcdd module -> the hpcdd modules it imports anywhere in its source (function-level
    imports included: a cycle through a lazy import is still a cycle in the layering)."""
    import ast

    mods = {}
    for path in package.rglob("*.py"):
        parts = path.relative_to(package.parent).with_suffix("").parts
        mods[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for name, path in mods.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and not node.level:
                targets = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in mods else node.module
                           for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                continue
            graph[name] |= {t for t in targets if t in mods and t != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_import_graph_has_no_cycles():
    graph = import_graph(Path(__file__).resolve().parents[1] / "hpcdd")
    assert "hpcdd.select.dream" in graph and "hpcdd.nets.embed" in graph["hpcdd.select.dream"]
    assert cycles(graph) == []
    assert cycles({"a": {"b"}, "b": {"a"}, "c": {"a"}}) == [["a", "b"]]  # the check itself works
