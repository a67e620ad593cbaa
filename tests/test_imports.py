"""The import graph of common/ and analysis/, read from the source with ast (nothing is imported):
it has no cycle, no module takes another's private (underscore) names, common/ never imports
analysis/, the data readers import nothing of ours but common/facedata.py, every import of a
course module sits at the top of its file, where a reader of the file sees it, and the module list
in common/__init__.py is in the order the imports run.

On failure the message prints the whole graph, one module and what it imports per line.
"""
import ast
import re

import pytest
from conftest import REPO

PACKAGES = ("common", "analysis")
LEAF = "common.facedata"
# The readers load_data() dispatches to. A new reader joins this list and imports only LEAF.
READERS = ("common.fer2013", "common.ferplus", "common.affectnet", "common.affectnet_yolo",
           "common.builtin_faces")
MODULE_LINES = 250  # the most lines of one module: each can be read in one sitting


def module_name(path):
    """common/data.py -> "common.data"; common/__init__.py -> "common"."""
    parts = path.relative_to(REPO).with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def find_modules():
    """{module name: path} for every .py file of the packages."""
    return {module_name(path): path for package in PACKAGES for path in sorted((REPO / package).glob("*.py"))}


def is_private(name):
    return name.startswith("_") and not name.startswith("__")


class ImportReader(ast.NodeVisitor):
    """Collects one module's imports of course modules: the edges of the graph, the private names
    it takes from them, and the imports made inside a function."""

    def __init__(self, name, modules):
        self.name, self.modules = name, modules
        self.edges = set()
        self.private = []  # "line N: name" for each private name taken from another module
        self.in_function = []  # "line N: module" for each course import inside a function
        self.aliases = {}  # local name -> course module it stands for
        self.depth = 0  # how many functions deep the visitor is

    def add_edge(self, target, line):
        if target == self.name:
            return
        self.edges.add(target)
        if self.depth:
            self.in_function.append(f"line {line}: {target}")

    def visit_FunctionDef(self, node):
        self.depth += 1
        self.generic_visit(node)
        self.depth -= 1

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_Import(self, node):
        for alias in node.names:
            if alias.name in self.modules:
                self.add_edge(alias.name, node.lineno)
                self.aliases[alias.asname or alias.name] = alias.name

    def visit_ImportFrom(self, node):
        base = node.module or ""
        if node.level:  # a relative import: resolve it against this module's package
            package = self.name.split(".")[:-node.level] if self.name.count(".") else [self.name]
            base = ".".join(package + ([base] if base else []))
        for alias in node.names:
            submodule = f"{base}.{alias.name}"
            if submodule in self.modules:  # `from common import data`: the module itself
                self.add_edge(submodule, node.lineno)
                self.aliases[alias.asname or alias.name] = submodule
            elif base in self.modules:  # `from common.data import load_data`: a name from it
                self.add_edge(base, node.lineno)
                if is_private(alias.name):
                    self.private.append(f"line {node.lineno}: from {base} import {alias.name}")

    def visit_Attribute(self, node):
        """`data._cached` or `common.data._cached`: a private name reached through an imported module."""
        if is_private(node.attr):
            owner = dotted(node.value)
            target = self.aliases.get(owner, owner if owner in self.modules else None)
            if target is not None and target != self.name:
                self.private.append(f"line {node.lineno}: {owner}.{node.attr}")
        self.generic_visit(node)


def dotted(node):
    """The dotted name an expression spells (`common.data`), or "" when it is not a plain name chain."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        head = dotted(node.value)
        return f"{head}.{node.attr}" if head else ""
    return ""


def read_graph(modules):
    """{module: ImportReader}, one per module, from its source."""
    readers = {}
    for name, path in modules.items():
        reader = ImportReader(name, modules)
        reader.visit(ast.parse(path.read_text(), filename=str(path)))
        readers[name] = reader
    return readers


def format_graph(readers):
    lines = ["the import graph (module -> what it imports):"]
    for name, reader in sorted(readers.items()):
        lines.append(f"  {name} -> {', '.join(sorted(reader.edges)) or '(nothing of ours)'}")
    return "\n".join(lines)


def find_cycle(edges):
    """One cycle as a list of modules (first == last), or None. Depth-first search: a module met
    again while it is still on the current path closes a cycle."""
    state = {}  # module -> "on path" or "done"
    path = []

    def visit(module):
        state[module] = "on path"
        path.append(module)
        for target in sorted(edges.get(module, ())):
            if state.get(target) == "on path":
                return path[path.index(target):] + [target]
            if target not in state:
                cycle = visit(target)
                if cycle:
                    return cycle
        path.pop()
        state[module] = "done"
        return None

    for module in sorted(edges):
        if module not in state:
            cycle = visit(module)
            if cycle:
                return cycle
    return None


@pytest.fixture(scope="module")
def graph():
    return read_graph(find_modules())


def test_the_graph_covers_both_packages_and_every_reader(graph):
    assert {"common.data", LEAF, "analysis.explore"} <= set(graph), format_graph(graph)
    assert set(READERS) <= set(graph), f"a reader listed here is missing\n{format_graph(graph)}"
    assert LEAF in graph["common.data"].edges, format_graph(graph)


def test_the_import_graph_has_no_cycle(graph):
    cycle = find_cycle({name: reader.edges for name, reader in graph.items()})
    assert cycle is None, f"import cycle: {' -> '.join(cycle or [])}\n{format_graph(graph)}"


def test_no_module_imports_another_modules_private_names(graph):
    taken = [f"{name}: {where}" for name, reader in graph.items() for where in reader.private]
    assert not taken, "private names imported across modules (make them public, or move the code):\n" + \
        "\n".join(taken) + f"\n{format_graph(graph)}"


def test_course_modules_are_imported_at_the_top_of_the_file(graph):
    hidden = [f"{name}: {where}" for name, reader in graph.items() for where in reader.in_function]
    assert not hidden, "imports inside a function (a sign of a cycle dodged):\n" + "\n".join(hidden) + \
        f"\n{format_graph(graph)}"


def test_common_never_imports_analysis(graph):
    upward = {name: sorted(t for t in reader.edges if t.split(".")[0] == "analysis")
              for name, reader in graph.items() if name.split(".")[0] == "common"}
    upward = {name: targets for name, targets in upward.items() if targets}
    assert not upward, f"common/ imports analysis/: {upward}\n{format_graph(graph)}"


def test_readers_import_only_the_face_data_module_which_imports_nothing_of_ours(graph):
    assert graph[LEAF].edges == set(), f"{LEAF} must stay a leaf\n{format_graph(graph)}"
    for reader in READERS:
        assert graph[reader].edges == {LEAF}, f"{reader} may import only {LEAF}\n{format_graph(graph)}"


def modules_listed_in_common_init():
    """The modules common/__init__.py names in its indented table, in order (its first column only)."""
    docstring = ast.get_docstring(ast.parse((REPO / "common" / "__init__.py").read_text()))
    rows = [line for line in docstring.splitlines() if re.match(r"    \S", line)]
    first_column = [re.split(r"\s{2,}", row.strip())[0] for row in rows]
    return [f"common.{name}" for column in first_column for name in re.findall(r"(\w+)\.py", column)]


def test_common_init_lists_every_module_after_the_modules_it_imports(graph):
    listed = modules_listed_in_common_init()
    in_common = sorted(name for name in graph if name.startswith("common."))
    assert sorted(set(listed)) == in_common, f"common/__init__.py lists {listed}, the package has {in_common}"
    late = [f"{name} imports {target}, listed after it" for name in listed for target in sorted(graph[name].edges)
            if target in listed and listed.index(target) > listed.index(name)]
    assert not late, "\n".join(late) + f"\n{format_graph(graph)}"


def test_no_module_is_longer_than_a_sitting():
    lengths = {name: len(path.read_text().splitlines()) for name, path in find_modules().items()}
    long = {name: lines for name, lines in lengths.items() if lines > MODULE_LINES}
    assert not long, f"modules over {MODULE_LINES} lines (split them by what they do): {long}"
