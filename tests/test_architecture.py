"""The package's structure, drawn from its imports with ``ast``: the rules docs/ARCHITECTURE.md states.

Each module's imports of ``bridge`` modules are read from its source (never executed): every
import counts for the direction rules ("X imports nothing from Y", lazy ones in functions
included), except those under ``if TYPE_CHECKING:`` (annotations only); module-level imports
alone count for the cycle rule, as only they run at import time.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "bridge"


@dataclass(frozen=True)
class Edge:
    source: str  # importing module, e.g. "bridge.runner"
    target: str  # imported module, e.g. "bridge.stream.host"
    top_level: bool  # runs at import time (not inside a function)
    line: int


def module_name(path: Path, package: Path = PACKAGE) -> str:
    parts = list(path.relative_to(package.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    """The absolute module an ``ImportFrom`` names (relative levels resolved)."""
    if node.level == 0:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports_of(path: Path, modules: set[str], package: Path = PACKAGE) -> list[Edge]:
    """The ``bridge`` modules that ``path`` imports, each resolved to a known module where one
    names a package member (``from bridge.stream import host`` → ``bridge.stream.host``)."""
    name = module_name(path, package)
    is_package = path.name == "__init__.py"
    edges: list[Edge] = []
    root = package.name

    def add(target: str, top: bool, line: int) -> None:
        if target == root or target.startswith(root + "."):
            edges.append(Edge(name, target, top, line))

    def visit(node: ast.AST, top: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                for sub in child.orelse:
                    visit_one(sub, top)
                continue
            visit_one(child, top)

    def visit_one(child: ast.AST, top: bool) -> None:
        if isinstance(child, ast.Import):
            for alias in child.names:
                add(alias.name, top, child.lineno)
        elif isinstance(child, ast.ImportFrom):
            base = _resolve(name, is_package, child)
            for alias in child.names:
                member = f"{base}.{alias.name}"
                add(member if member in modules else base, top, child.lineno)
        elif isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            visit(child, False)
        else:
            visit(child, top)

    visit(ast.parse(path.read_text(encoding="utf-8"), filename=str(path)), True)
    return edges


def import_graph(package: Path = PACKAGE) -> list[Edge]:
    files = sorted(package.rglob("*.py"))
    modules = {module_name(f, package) for f in files}
    return [e for f in files for e in imports_of(f, modules, package)]


def in_room(module: str, room: str) -> bool:
    return module == room or module.startswith(room + ".")


def violations(edges: list[Edge], source_rooms: tuple[str, ...], forbidden: tuple[str, ...]) -> list[str]:
    return [f"{e.source}:{e.line} imports {e.target}" for e in edges
            if any(in_room(e.source, s) for s in source_rooms) and any(in_room(e.target, f) for f in forbidden)]


def cycles(edges: list[Edge], room: str) -> list[list[str]]:
    """Strongly connected components of more than one module (or a self-import) inside ``room``,
    over module-level imports."""
    graph: dict[str, set[str]] = {}
    for e in edges:
        if e.top_level and in_room(e.source, room) and in_room(e.target, room) and e.source != e.target:
            graph.setdefault(e.source, set()).add(e.target)
            graph.setdefault(e.target, set())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def strong(v: str) -> None:  # Tarjan
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            strong(v)
    return found


EDGES = import_graph()

#: The rooms above the pure layers (everything but protocol, capture, phases).
ABOVE_PURE = ("bridge.runner", "bridge.daemon", "bridge.stream", "bridge.transport", "bridge.preview", "bridge.export",
              "bridge.analysis", "bridge.commands", "bridge.cli", "bridge.trace", "bridge.bench", "bridge.models",
              "bridge.latent_preview", "bridge.request")
SENDERS = ("bridge.transport.osc_out", "bridge.transport.zmq_pub", "bridge.transport.textures", "bridge.transport.osc_encode",
           "bridge.transport.control", "bridge.transport.control_osc", "bridge.transport.control_zmq")

RULES = {
    "the protocol module imports nothing from bridge (TouchDesigner runs a copy)": (("bridge.protocol",), ("bridge",)),
    "capture imports nothing above it": (("bridge.capture",), ABOVE_PURE + ("bridge.phases",)),
    "phases import nothing above them": (("bridge.phases",), ABOVE_PURE + ("bridge.capture",)),
    "export imports no sender and not the preview": (("bridge.export",), SENDERS + ("bridge.preview", "bridge.stream")),
    "runner imports no sender, not the preview, not the control parser": (
        ("bridge.runner",), SENDERS + ("bridge.preview", "bridge.daemon", "bridge.commands")),
    "stream (delivery) does not import the daemon, the runner or the commands": (
        ("bridge.stream",), ("bridge.daemon", "bridge.runner", "bridge.commands", "bridge.preview")),
    "transport does not import orchestration": (("bridge.transport",), ("bridge.runner", "bridge.daemon", "bridge.commands", "bridge.stream")),
    "analysis does not import delivery, transport or the daemon": (
        ("bridge.analysis",), ("bridge.stream", "bridge.transport", "bridge.daemon", "bridge.commands", "bridge.preview")),
    "only the CLI imports the commands": (
        tuple(r for r in ABOVE_PURE if r not in ("bridge.commands", "bridge.cli")) + ("bridge.capture", "bridge.phases"),
        ("bridge.commands",)),
}


def test_the_graph_is_read():
    """The reader finds the imports it must (a rule over an empty graph would pass anything)."""
    targets = {(e.source, e.target) for e in EDGES}
    assert ("bridge.runner", "bridge.stream.host") in targets
    assert ("bridge.capture.session", "bridge.capture.adapters") in targets  # relative import, resolved
    assert ("bridge.stream.sinks", "bridge.transport.zmq_pub") in targets  # a lazy import inside a function
    assert len(EDGES) > 100


@pytest.mark.parametrize("rule", sorted(RULES))
def test_import_rule(rule):
    sources, forbidden = RULES[rule]
    assert violations(EDGES, sources, forbidden) == [], rule


@pytest.mark.parametrize("room", ["bridge.capture", "bridge.phases", "bridge.stream", "bridge.transport", "bridge.export"])
def test_no_import_cycle_inside(room):
    assert cycles(EDGES, room) == []


def test_runner_asks_no_publisher_or_adapter_by_getattr():
    """Declared protocols (Publisher, Adapter), not probing: no ``getattr`` on a publisher or adapter."""
    for path in [PACKAGE / "runner.py", PACKAGE / "daemon.py", PACKAGE / "capture" / "session.py"]:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "getattr" and node.args:
                text = ast.unparse(node.args[0])
                assert not any(w in text for w in ("publish", "adapter")), f"{path.name}:{node.lineno} getattr({text}, ...)"


def test_a_violating_import_is_caught(tmp_path):
    """The rules bite: a capture module that imports the runner, and a cycle, are both reported."""
    pkg = tmp_path / "bridge"
    (pkg / "capture").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "runner.py").write_text("import bridge.capture\n")
    (pkg / "capture" / "__init__.py").write_text("from .a import x\n")
    (pkg / "capture" / "a.py").write_text("from . import b\nx = 1\ndef f():\n    from bridge.runner import Runner\n")
    (pkg / "capture" / "b.py").write_text("from bridge.capture.a import x\nfrom typing import TYPE_CHECKING\n"
                                          "if TYPE_CHECKING:\n    from bridge import runner\n")
    edges = import_graph(pkg)
    sources, forbidden = RULES["capture imports nothing above it"]
    assert violations(edges, sources, forbidden) == ["bridge.capture.a:4 imports bridge.runner"]  # TYPE_CHECKING ignored
    assert cycles(edges, "bridge.capture") == [["bridge.capture.a", "bridge.capture.b"]]
