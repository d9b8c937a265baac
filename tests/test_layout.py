"""
Tests for the shape of the package: no import cycles, and arrows that point
down only (see README's Development section).
"""

from __future__ import annotations

import ast
import importlib
import os
import textwrap
from collections.abc import Iterable
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

import tcpcomm

#: Where the package's sources are: those of the tcpcomm the tests import.
SOURCE = Path(tcpcomm.__file__).parent

WIRE = "tcpcomm.wire"
HUB = "tcpcomm.hub"
CONTROL = "tcpcomm.control"
FLEET = "tcpcomm.fleet"

#: Modules below every layer, which any module may import: the package's
#: version, the interfaces between layers, and leaves that import nothing
#: of tcpcomm but each other.
SHARED = frozenset(
    {
        "tcpcomm",
        "tcpcomm.interfaces",
        "tcpcomm.templates",
        "tcpcomm.logs",
        "tcpcomm.messagelog",
        "tcpcomm.tokens",
    }
)

#: The only modules that may import the control side: those that build the
#: services, and the command line.
BUILDERS = frozenset({"tcpcomm.tap", "tcpcomm.cli"})


def modulesIn(root: Path, package: str) -> dict[str, Path]:
    """
    Every module of C{package}, whose folder is C{root}, by its dotted name.
    """
    modules = {}
    for path in sorted(root.rglob("*.py")):
        parts = [package, *path.relative_to(root).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def _within(name: str, layer: str) -> bool:
    return name == layer or name.startswith(layer + ".")


def importGraph(root: Path, package: str) -> dict[str, set[str]]:
    """
    The modules of C{package} and, for each, the modules of C{package} it
    imports anywhere in its source: at the top, under C{if TYPE_CHECKING:}
    and inside functions alike. Importing C{a.b.c} runs C{a} and C{a.b}
    first, so they count as imported too.
    """
    modules = modulesIn(root, package)
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        isPackage = path.name == "__init__.py"
        imported: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                imported.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    # Relative: from the module's package, up one per extra dot.
                    parts = name.split(".")
                    base = parts[: len(parts) - node.level + (1 if isPackage else 0)]
                    start = ".".join([*base, *([node.module] if node.module else [])])
                else:
                    start = node.module or ""
                imported.add(start)
                # "from a import b" imports the module a.b, when b is one.
                imported.update(f"{start}.{alias.name}" for alias in node.names)
        targets = set()
        for target in imported:
            parts = target.split(".")
            for end in range(1, len(parts) + 1):
                prefix = ".".join(parts[:end])
                if prefix in modules and prefix != name:
                    targets.add(prefix)
        graph[name] = targets
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """
    The cycles of C{graph}, each named from its first module back to
    itself (C{[a, b, a]}): in each group of modules that import each other
    around and around (Tarjan's strongly connected components), the
    shortest cycle through each member, so that every member is named.
    """
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    onStack: set[str] = set()
    groups: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        onStack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in onStack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                onStack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1 or node in graph.get(node, ()):
                groups.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    found: list[list[str]] = []
    for group in sorted(groups):
        for member in group:
            cycle = _cycleThrough(member, set(group), graph)
            first = cycle.index(min(cycle))
            cycle = [*cycle[first:-1], *cycle[:first], cycle[first]]
            if cycle not in found:
                found.append(cycle)
    return found


def _cycleThrough(start: str, members: set[str], graph: dict[str, set[str]]) -> list[str]:
    """
    The shortest way from C{start} back to itself through C{members}.
    """
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for target in sorted(graph[node] & members):
                if target == start:
                    return [*paths[node], start]
                if target not in paths:
                    paths[target] = [*paths[node], target]
                    following.append(target)
        frontier = following
    raise AssertionError(f"no cycle through {start}")  # a group always has one


def _arrows(cycle: list[str]) -> str:
    return " -> ".join(cycle)


def outsideImports(
    graph: dict[str, set[str]], layer: str, allowed: Iterable[str]
) -> list[tuple[str, str]]:
    """
    Each C{(module, imported)} of a module of C{layer} that imports
    something neither of C{layer} nor C{allowed}.
    """
    allowedSet = set(allowed)
    return [
        (name, target)
        for name in sorted(graph)
        if _within(name, layer)
        for target in sorted(graph[name])
        if not _within(target, layer) and target not in allowedSet
    ]


class ImportGraphTests(SynchronousTestCase):
    """
    The import graph sees every import, and names the cycles in it.
    """

    def package(self, files: dict[str, str]) -> Path:
        """
        A package C{pkg} of C{files} (paths to sources) in a new folder.
        """
        root = Path(self.mktemp()) / "pkg"
        for name, text in {"__init__.py": "", **files}.items():
            path = root / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(textwrap.dedent(text), encoding="utf-8")
        return root

    def test_everyKindOfImport(self) -> None:
        """Imports at the top, under TYPE_CHECKING, in functions and relative ones are all edges."""
        root = self.package(
            {
                "a.py": "import pkg.b\n",
                "b.py": """
                    from typing import TYPE_CHECKING
                    if TYPE_CHECKING:
                        from pkg.c import C
                """,
                "c.py": """
                    def later():
                        from . import d
                """,
                "d.py": "from .sub.e import E\n",
                "sub/__init__.py": "",
                "sub/e.py": "from .. import a\nimport os\n",
            }
        )
        self.assertEqual(
            importGraph(root, "pkg"),
            {
                "pkg": set(),
                "pkg.a": {"pkg", "pkg.b"},
                "pkg.b": {"pkg", "pkg.c"},
                "pkg.c": {"pkg", "pkg.d"},
                "pkg.d": {"pkg", "pkg.sub", "pkg.sub.e"},
                "pkg.sub": set(),
                "pkg.sub.e": {"pkg", "pkg.a"},
            },
        )

    def test_cycleNamed(self) -> None:
        """A cycle through a type-only import is found and named module by module."""
        root = self.package(
            {
                "a.py": "from pkg.b import B\n",
                "b.py": """
                    from typing import TYPE_CHECKING
                    if TYPE_CHECKING:
                        from pkg.a import A
                """,
                "c.py": "from pkg import a\n",
            }
        )
        self.assertEqual(cycles(importGraph(root, "pkg")), [["pkg.a", "pkg.b", "pkg.a"]])

    def test_noCycle(self) -> None:
        """Modules that import in one direction only make no cycle."""
        root = self.package({"a.py": "import pkg.b\n", "b.py": "import pkg.c\n", "c.py": ""})
        self.assertEqual(cycles(importGraph(root, "pkg")), [])


class LayoutTests(SynchronousTestCase):
    """
    tcpcomm's own imports have no cycle, and point down only: the wire and
    the hub side reach each other only through the interfaces, and only the
    builders of the services reach the control side.
    """

    def setUp(self) -> None:
        self.graph = importGraph(SOURCE, "tcpcomm")

    def test_layersExist(self) -> None:
        """The layers the other tests check hold the modules they are about."""
        for module in [
            "tcpcomm.wire.framing",
            "tcpcomm.wire.protocol",
            "tcpcomm.wire.liveness",
            "tcpcomm.wire.address",
            "tcpcomm.hub.hub",
            "tcpcomm.hub.session",
            "tcpcomm.hub.registry",
            "tcpcomm.control.admin",
            "tcpcomm.control.openapi",
            "tcpcomm.control.metrics",
            "tcpcomm.fleet.backplane",
            "tcpcomm.fleet.node",
            *SHARED,
            *BUILDERS,
        ]:
            self.assertTrue(module in self.graph, module)
        self.assertTrue(os.path.exists(SOURCE / "control" / "dashboard.html"))

    def test_noCycles(self) -> None:
        """No modules of tcpcomm import each other, even for types only or in a function."""
        found = cycles(self.graph)
        self.assertEqual(found, [], "import cycles: " + "; ".join(map(_arrows, found)))

    def test_wireReachesHubOnlyThroughInterfaces(self) -> None:
        """The wire modules import nothing of tcpcomm but each other and the shared modules."""
        found = outsideImports(self.graph, WIRE, SHARED)
        self.assertEqual(found, [], "; ".join(f"{a} imports {b}" for a, b in found))

    def test_hubImportsNoWire(self) -> None:
        """The hub side imports nothing of tcpcomm but its own and the shared modules."""
        found = outsideImports(self.graph, HUB, SHARED)
        self.assertEqual(found, [], "; ".join(f"{a} imports {b}" for a, b in found))

    def test_fleetImportsOnlyShared(self) -> None:
        """The fleet reaches the hub only through the interfaces: it imports nothing of tcpcomm but its own and the shared modules."""
        found = outsideImports(self.graph, FLEET, SHARED)
        self.assertEqual(found, [], "; ".join(f"{a} imports {b}" for a, b in found))

    def test_sharedImportOnlyShared(self) -> None:
        """The shared modules import nothing of tcpcomm but each other."""
        found = [
            (name, target)
            for name in sorted(SHARED)
            for target in sorted(self.graph[name])
            if target not in SHARED
        ]
        self.assertEqual(found, [], "; ".join(f"{a} imports {b}" for a, b in found))

    def test_onlyBuildersImportControl(self) -> None:
        """Nothing imports the admin API, its document or the metrics but tap and cli."""
        found = [
            (name, target)
            for name in sorted(self.graph)
            if not _within(name, CONTROL) and name not in BUILDERS
            for target in sorted(self.graph[name])
            if _within(target, CONTROL)
        ]
        self.assertEqual(found, [], "; ".join(f"{a} imports {b}" for a, b in found))


class LogNamespaceTests(SynchronousTestCase):
    """
    Modules that moved into the layers log under the namespaces they had
    before, which the README shows and log filters name.
    """

    def test_namespacesKept(self) -> None:
        """Each moved module's logger has its old namespace."""
        for module, namespace in [
            ("tcpcomm.wire.protocol", "tcpcomm.protocol"),
            ("tcpcomm.wire.liveness", "tcpcomm.liveness"),
            ("tcpcomm.hub.session", "tcpcomm.session"),
            ("tcpcomm.hub.hub", "tcpcomm.hub"),
            ("tcpcomm.control.admin", "tcpcomm.admin"),
        ]:
            self.assertEqual(importlib.import_module(module).log.namespace, namespace, module)
