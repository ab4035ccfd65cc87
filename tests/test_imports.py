"""The architecture as the import graph: the core library never imports the experiment side, and
no two modules of structmat import each other in a circle. Every import counts, at module level
and inside functions alike (read from the source with ``ast``, nothing is imported)."""

import ast

from helpers import REPO

PACKAGE = REPO / "structmat"
EXPERIMENTS = "structmat.experiments"


def module_name(path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imported_modules(name: str) -> set[str]:
    """The structmat modules ``name`` imports: ``from X import y`` counts ``X.y`` when that is a
    module, else ``X``."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:
                found.add(f"{target}.{alias.name}" if f"{target}.{alias.name}" in MODULES else target)
    return {m for m in found if m in MODULES}


GRAPH = {name: imported_modules(name) for name in MODULES}


def test_the_walk_sees_imports_inside_functions():
    assert "structmat.monarch.triton_kernel" in GRAPH["structmat.monarch.multiply"]  # a lazy import
    assert len(MODULES) > 30


def test_core_never_imports_the_experiment_side():
    core = [m for m in MODULES if not (m == EXPERIMENTS or m.startswith(EXPERIMENTS + "."))]
    bad = {m: sorted(t for t in GRAPH[m] if t == EXPERIMENTS or t.startswith(EXPERIMENTS + ".")) for m in core}
    assert {m: t for m, t in bad.items() if t} == {}


def test_no_import_cycles():
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def visit(v):  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in GRAPH[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1 or v in GRAPH[v]:
                cycles.append(sorted(component))

    for v in GRAPH:
        if v not in index:
            visit(v)
    assert cycles == []


def private_names_taken(name: str, source: str) -> set[tuple[str, str]]:
    """``(module, name)`` of every private name (``_x``, not dunder) that module ``name`` takes from
    another structmat module: ``from X import _x``, or ``X._x`` on a structmat module it imported."""
    package = name if MODULES[name].name == "__init__.py" else name.rpartition(".")[0]
    taken, aliases = set(), {}  # aliases: local name -> structmat module
    tree = ast.parse(source)
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - (node.level - 1)] if node.level else []
            target = ".".join(base + ([node.module] if node.module else [])) if node.level else node.module or ""
            for alias in node.names:
                if f"{target}.{alias.name}" in MODULES:
                    aliases[alias.asname or alias.name] = f"{target}.{alias.name}"
                elif target in MODULES and target != name and _private(alias.name):
                    taken.add((target, alias.name))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in MODULES and alias.asname:
                    aliases[alias.asname] = alias.name
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases:
            if _private(node.attr) and aliases[node.value.id] != name:
                taken.add((aliases[node.value.id], node.attr))
    return taken


def _private(attr: str) -> bool:
    return attr.startswith("_") and not attr.startswith("__")


# Taken before the rule was derived, in structmat/adapters (being rebuilt for #28's other half): to go there.


def test_no_private_names_cross_modules():
    """A private name stays in its module: no other structmat module imports it or reaches it as
    ``module._name`` (the list is derived from the source, not kept by hand)."""
    found = {
        (m, owner, private)
        for m, path in MODULES.items()
        for owner, private in private_names_taken(m, path.read_text())
    }
    assert found == set()


def test_the_private_name_rule_can_fail():
    assert private_names_taken("structmat.analysis.curves", "from ..checks import _secret\nx = 1") == {
        ("structmat.checks", "_secret")
    }
    source = "from ..monarch import multiply\nfrom .. import approximation as ap\nmultiply._bmm(1)\nap._f\nap.public"
    assert private_names_taken("structmat.analysis.curves", source) == {
        ("structmat.monarch.multiply", "_bmm"),
        ("structmat.approximation", "_f"),
    }
    assert private_names_taken("structmat.analysis.curves", "from .capacity import choose_structures") == set()
