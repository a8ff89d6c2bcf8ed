"""Every lab module imports on its own, and no lab modules import each other in a circle.

The static check reads every import statement of every module with ``ast``, inside
functions too: a lazy import hides a circle from the interpreter, not from the design
(``lab.zoo`` once imported the model modules inside a function, and they imported it).
Imports under ``if TYPE_CHECKING`` are left out: they never run.
"""

import ast
import importlib.util
import json
import pkgutil
import subprocess
import sys
from pathlib import Path

import lab

ROOT = Path(lab.__file__).parent


def lab_modules() -> dict[str, Path]:
    """Every module of the lab package, by dotted name, with its source file."""
    names = ["lab"] + [m.name for m in pkgutil.walk_packages(lab.__path__, "lab.")]
    return {name: Path(importlib.util.find_spec(name).origin) for name in names}


def _import_statements(tree: ast.AST):
    """Every import statement, in functions too, except under ``if TYPE_CHECKING``."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            yield from (n for child in node.orelse for n in _import_statements_of(child))
            continue
        yield from _import_statements_of(node)


def _import_statements_of(node: ast.AST):
    if isinstance(node, (ast.Import, ast.ImportFrom)):
        yield node
    else:
        yield from _import_statements(node)


def imported_modules(name: str, path: Path, modules) -> set[str]:
    """The lab modules that importing ``name`` imports directly."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets = set()
    for node in _import_statements(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:  # `from pkg import sub` imports the submodule pkg.sub
                sub = f"{base}.{alias.name}"
                targets.add(sub if sub in modules else base)
    edges = set()
    for target in targets:
        parts = target.split(".")
        # importing a.b.c runs a.b's __init__ too; the importer's own packages are running
        for depth in range(1, len(parts) + 1):
            step = ".".join(parts[:depth])
            if step in modules and step != name and not name.startswith(step + "."):
                edges.add(step)
    return edges


def import_graph() -> dict[str, set[str]]:
    modules = lab_modules()
    return {name: imported_modules(name, path, modules) for name, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as ``[a, b, ..., a]``, or None when the graph is acyclic."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []

    def visit(node):
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start)):
            return found
    return None


def test_the_static_import_graph_of_lab_is_acyclic():
    graph = import_graph()
    assert "lab.zoo" in graph["lab.train"], "the graph reader misses a plain relative import"
    cycle = find_cycle(graph)
    assert cycle is None, "lab modules import each other in a circle: " + " -> ".join(cycle)


def test_find_cycle_names_the_circle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set()}
    assert find_cycle(graph) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_the_graph_reader_follows_relative_and_package_imports(tmp_path):
    source = ("from __future__ import annotations\nimport typing\nfrom ..zoo import load\n"
              "from .. import rules\nfrom . import networks\n"
              "if typing.TYPE_CHECKING:\n    from ..train import Trainer\n"
              "def lazy():\n    from ..study import run\n")
    path = tmp_path / "fake.py"
    path.write_text(source)
    modules = {"lab", "lab.zoo", "lab.rules", "lab.models", "lab.models.networks",
               "lab.train", "lab.study", "lab.models.fake"}
    assert imported_modules("lab.models.fake", path, modules) == {
        "lab.zoo", "lab.rules", "lab.models.networks", "lab.study"}


def test_every_lab_module_imports_alone_in_a_fresh_interpreter():
    """Each module imported first, with no lab module loaded before it, so that one that
    only works after another has been imported fails here. One interpreter for all:
    between modules every ``lab`` entry leaves ``sys.modules`` (third-party packages
    stay loaded, which changes nothing about the order of lab's own imports)."""
    script = (
        "import importlib, json, sys, traceback\n"
        "failures = {}\n"
        "for name in json.loads(sys.argv[1]):\n"
        "    for key in [k for k in sys.modules if k == 'lab' or k.startswith('lab.')]:\n"
        "        del sys.modules[key]\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except Exception:\n"
        "        failures[name] = traceback.format_exc(limit=-3)\n"
        "print(json.dumps(failures))\n")
    names = sorted(lab_modules())
    done = subprocess.run([sys.executable, "-c", script, json.dumps(names)],
                          capture_output=True, text=True, cwd=ROOT.parent, timeout=600)
    assert done.returncode == 0, done.stderr
    failures = json.loads(done.stdout.strip().splitlines()[-1])
    assert not failures, "\n".join(f"import {k} failed:\n{v}" for k, v in failures.items())
