"""The layering of ARCHITECTURE.md, checked on the import graph of `src/` (read with `ast`, nothing is
imported): every import counts — inside functions and `if TYPE_CHECKING:` blocks too — because a lazy
import is still a dependency, and relative imports are resolved. A failure names each offending import
as `file:line → module`."""

from __future__ import annotations

import ast
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

# --- the rules ------------------------------------------------------------------------------------------
# Packages: a module belongs to the longest of these that contains it; any other `backout.X` module
# (backout.manifest, backout.errors, …) is a package of its own, in the bottom layer.
PACKAGES = (
    "backout.cli",
    "backout.server",
    "backout.runbooks",
    "backout.control",
    "backout.platforms",
    "backout.platforms.base",
    "backout.platforms.local",
    "backout.platforms.aws",
    "sda",
)
# Layers, top first: a package may import its own layer and the ones below, never one above.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("backout.cli",),
    ("backout.server",),
    ("backout.runbooks",),
    ("backout.control",),
    ("backout.platforms", "backout.platforms.local", "backout.platforms.aws"),
    ("backout.platforms.base",),  # the protocols: every platform implements them, `open_platform` picks one
    ("<top-level modules>",),  # backout.manifest, backout.errors, …
)
# Imports forbidden whatever the layers allow: (importers, imported, why).
FORBIDDEN: tuple[tuple[tuple[str, ...], str, str], ...] = (
    (
        ("backout.control", "backout.runbooks", "backout.server"),
        "backout.platforms.local",
        "only the CLI (starting the local process) and the local platform itself know it",
    ),
    (("backout.control", "backout.runbooks"), "backout.server", "the server calls them, never the reverse"),
    (("sda",), "backout", "the reference service never imports backout"),
)
# Known exceptions, each with the reason it still stands and what ends it: (importer, imported, why).
ALLOWED: tuple[tuple[str, str, str], ...] = ()
# Packages whose modules must not import each other in a cycle (command modules import leaf modules only).
NO_MODULE_CYCLES_IN = ("backout.cli",)

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "src"
TOP_LEVEL = "<top-level modules>"


# --- the import graph -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Import:
    """One import statement's edge: who imports what, and where (for the failure message)."""

    source: str  # the importing module
    target: str  # the imported module (or the package a `from … import name` takes a name from)
    where: str  # file:line, relative to the repository

    def __str__(self) -> str:
        return f"{self.where} → {self.target}"


def _within(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def modules(src: Path) -> dict[str, Path]:
    """Every module under `src` by dotted name (a package is its `__init__.py`)."""
    out = {}
    for path in sorted(src.rglob("*.py")):
        parts = list(path.relative_to(src).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def imports(src: Path, root: Path = ROOT) -> list[Import]:
    """The imports of every module under `src` that name a module under `src` (third-party ones are
    not the layers' business)."""
    known = modules(src)
    ours = {name.split(".")[0] for name in known}
    out = []
    for name, path in known.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        where = path.relative_to(root) if path.is_relative_to(root) else path
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base_parts = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    base = ".".join([*base_parts, *([node.module] if node.module else [])])
                else:
                    base = node.module or ""
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
            for target in dict.fromkeys(targets):
                if target.split(".")[0] in ours:
                    out.append(Import(name, target, f"{where}:{node.lineno}"))
    return out


def package_of(module: str) -> str:
    """The longest of PACKAGES containing `module`; else `backout.X` for a top-level module."""
    best = max((p for p in PACKAGES if _within(module, p)), key=len, default=None)
    if best is not None:
        return best
    return ".".join(module.split(".")[:2])


def layer_of(package: str) -> int | None:
    """The package's layer, 0 the top; None for what the layers do not cover (sda)."""
    for i, layer in enumerate(LAYERS):
        if package in layer:
            return i
    return len(LAYERS) - 1 if _within(package, "backout") and package not in PACKAGES else None


def cycles(edges: Iterable[Import], node_of: dict[str, str] | None = None) -> list[list[Import]]:
    """The imports inside each strongly connected component (Tarjan) of the graph whose nodes are
    `node_of[module]` (the modules themselves without it): one list per cycle, empty when acyclic."""
    node = (lambda m: node_of.get(m, m)) if node_of is not None else (lambda m: m)
    graph: dict[str, set[str]] = defaultdict(set)
    sites: dict[tuple[str, str], list[Import]] = defaultdict(list)
    for imp in edges:
        a, b = node(imp.source), node(imp.target)
        if a != b:
            graph[a].add(b)
            sites[a, b].append(imp)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(component)

    for v in sorted(list(graph)):
        if v not in index:
            visit(v)
    return [
        [imp for (a, b), imps in sorted(sites.items()) if a in c and b in c for imp in imps] for c in components
    ]


def layer_violations(edges: list[Import]) -> list[str]:
    """Every import that breaks a rule above, as one line naming the rule and `file:line → module`."""
    out = []
    node_of = {m: package_of(m) for imp in edges for m in (imp.source, imp.target)}
    for cycle in cycles(edges, node_of):
        names = ", ".join(sorted({node_of[imp.source] for imp in cycle}))
        out += [f"cycle between packages ({names}): {imp}" for imp in cycle]
    for imp in edges:
        src_pkg, dst_pkg = node_of[imp.source], node_of[imp.target]
        src_layer, dst_layer = layer_of(src_pkg), layer_of(dst_pkg)
        if src_layer is not None and dst_layer is not None and dst_layer < src_layer:
            out.append(f"upward import ({src_pkg} → {dst_pkg}, a layer above): {imp}")
        if any(imp.source == a and _within(imp.target, b) for a, b, _ in ALLOWED):
            continue
        for importers, imported, why in FORBIDDEN:
            if any(_within(imp.source, p) for p in importers) and _within(imp.target, imported):
                out.append(f"forbidden import of {imported} ({why}): {imp}")
    return out


def module_cycles(edges: list[Import], package: str) -> list[str]:
    """Cycles between the modules of one package (the package's own `__init__` aside)."""
    inside = [i for i in edges if _within(i.source, package) and _within(i.target, package)]
    inside = [i for i in inside if package not in (i.source, i.target)]
    return [f"cycle in {package}: {imp}" for cycle in cycles(inside) for imp in cycle]


# --- the tests --------------------------------------------------------------------------------------------
def test_packages_import_only_down_the_layers() -> None:
    violations = layer_violations(imports(SRC))
    assert not violations, f"{len(violations)} import(s) break the layers:\n" + "\n".join(violations)


def test_no_module_cycle_within_cli() -> None:
    edges = imports(SRC)
    found = [line for package in NO_MODULE_CYCLES_IN for line in module_cycles(edges, package)]
    assert not found, "modules import each other in a cycle:\n" + "\n".join(found)


def test_the_walker_sees_lazy_type_checking_and_relative_imports(tmp_path: Path) -> None:
    """The rules are only as good as the graph: a tiny tree with every kind of import, checked."""
    src = tmp_path / "src"
    files = {
        "backout/__init__.py": "",
        "backout/errors.py": "",
        "backout/control/__init__.py": "",
        "backout/control/store.py": (
            "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from backout.runbooks import verify\n"
        ),
        "backout/runbooks/__init__.py": "",
        "backout/runbooks/verify.py": "def f():\n    from ..control import store\n    from . import fix\n",
        "backout/runbooks/fix.py": "import backout.platforms.local.supervisor\nfrom backout.errors import E\n",
        "backout/platforms/__init__.py": "",
        "backout/platforms/local/__init__.py": "",
        "backout/platforms/local/supervisor.py": "",
        "backout/cli/__init__.py": "",
        "backout/cli/a.py": "def g():\n    from backout.cli import b\n",
        "backout/cli/b.py": "from .a import g\n",
        "sda/__init__.py": "import backout.errors\n",
    }
    for name, text in files.items():
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        (src / name).write_text(text)
    edges = imports(src, tmp_path)
    assert {(i.source, i.target) for i in edges} == {
        ("backout.control.store", "backout.runbooks.verify"),
        ("backout.runbooks.verify", "backout.control.store"),
        ("backout.runbooks.verify", "backout.runbooks.fix"),
        ("backout.runbooks.fix", "backout.platforms.local.supervisor"),
        ("backout.runbooks.fix", "backout.errors"),
        ("backout.cli.a", "backout.cli.b"),
        ("backout.cli.b", "backout.cli.a"),
        ("sda", "backout.errors"),
    }
    found = layer_violations(edges)
    assert found == [
        "cycle between packages (backout.control, backout.runbooks): "
        "src/backout/control/store.py:3 → backout.runbooks.verify",
        "cycle between packages (backout.control, backout.runbooks): "
        "src/backout/runbooks/verify.py:2 → backout.control.store",
        "upward import (backout.control → backout.runbooks, a layer above): "
        "src/backout/control/store.py:3 → backout.runbooks.verify",
        "forbidden import of backout.platforms.local (only the CLI (starting the local process) and the local "
        "platform itself know it): src/backout/runbooks/fix.py:1 → backout.platforms.local.supervisor",
        "forbidden import of backout (the reference service never imports backout): "
        "src/sda/__init__.py:1 → backout.errors",
    ]
    assert module_cycles(edges, "backout.cli") == [
        "cycle in backout.cli: src/backout/cli/a.py:2 → backout.cli.b",
        "cycle in backout.cli: src/backout/cli/b.py:1 → backout.cli.a",
    ]
