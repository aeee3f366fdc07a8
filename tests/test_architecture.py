"""The library's shape, read from its source with `ast`: no import cycle between its modules, its subpackages import
one another only along the arrows docs/architecture.md draws, and the remote-code files import only torch,
transformers and each other."""

import ast
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LIB = ROOT / "modeling_mode" / "lib"
PACKAGE = "modeling_mode.lib"
# Which subpackage of the library imports which: the arrows of docs/architecture.md, listed here and only here.
ARROWS = {
    "core": set(),
    "data": {"core"},
    "hub": {"core"},
    "clustering": {"core", "data", "hub"},
    "reshard": {"core", "data", "clustering"},
    "training": {"core", "data", "clustering", "reshard"},
    "evaluation": {"core", "data"},
    "publish": {"core", "hub", "clustering", "evaluation"},
    "assembly": {"core", "hub", "clustering", "training", "publish"},
    "growth": {"core", "data", "hub", "clustering", "training", "evaluation", "publish", "assembly"},
}
# The files that travel to the Hub as remote code (beside modeling_mode/lib, in modeling_mode/).
REMOTE_CODE = (
    "adapters",
    "configuration_mode_clip",
    "families",
    "modeling_mode_clip",
    "routing",
    "tokenization_mode_clip",
)


def library_modules() -> dict[str, Path]:
    """Every module of the library by its dotted name; a package by its __init__.py. Not the `evaluate` metric
    scripts, which are loaded by path, never imported."""
    found = {}
    for path in sorted(LIB.rglob("*.py")):
        if "metrics" in path.relative_to(LIB).parts:
            continue
        parts = path.relative_to(ROOT).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imported(name: str, path: Path) -> set[str]:
    """The modules `name` imports, at any depth of it (a function's imports, TYPE_CHECKING's too): deferring an
    import hides no cycle here. `from package import module` imports that module."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")
            base = base[: len(base) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            found |= {module} | {f"{module}.{alias.name}" for alias in node.names}
    return found


def library_graph() -> dict[str, set[str]]:
    """Each library module's imports of library modules, with the packages Python runs first (a.b.c: a.b's
    __init__.py): an import of a leaf module of a package whose __init__ imported much would import all that."""
    modules = library_modules()
    graph = {}
    for name, path in modules.items():
        targets = set()
        for target in imported(name, path):
            parts = target.split(".")
            targets |= {".".join(parts[:n]) for n in range(3, len(parts) + 1)} & modules.keys()
        graph[name] = targets - {name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A cycle of `graph` (its modules in import order, the first repeated last), or None."""
    state, path = {}, []

    def visit(node):
        state[node] = "open"
        path.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == "open":
                return path[path.index(target) :] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        state[node] = "done"
        path.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def subpackage(module: str) -> str | None:
    """The library's subpackage that `module` belongs to (None for the library's own __init__)."""
    parts = module.split(".")
    return parts[2] if len(parts) > 2 else None


def test_no_import_cycle_between_the_librarys_modules():
    assert find_cycle(library_graph()) is None, " -> ".join(find_cycle(library_graph()))


def test_a_cycle_is_found_where_there_is_one():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycle(graph) == ["a", "b", "c", "a"] and find_cycle({"a": {"b"}, "b": set()}) is None


def test_every_module_lies_in_a_subpackage_that_imports_the_others_along_the_arrows_only():
    graph = library_graph()
    assert {subpackage(name) for name in graph} - {None} == ARROWS.keys(), "a subpackage the arrows do not name"
    assert [name for name in graph if subpackage(name) is None] == [PACKAGE], "a module outside the subpackages"
    drawn = {(source, target) for source, targets in ARROWS.items() for target in targets}
    found = {
        (subpackage(name), subpackage(target))
        for name, targets in graph.items()
        for target in targets
        if subpackage(name) and subpackage(target) and subpackage(target) != subpackage(name)
    }
    assert found - drawn == set(), f"imports along no arrow: {sorted(found - drawn)}"
    assert drawn - found == set(), f"arrows no import takes (take them out of ARROWS and the docs): {drawn - found}"


def test_the_library_never_imports_the_job_or_a_script():
    for name, path in library_modules().items():
        outside = {
            target
            for target in imported(name, path)
            if target.split(".")[0] in ("hub_cards", "train", "eval") or target.startswith("modeling_mode.job")
        }
        assert not outside, f"{name} imports {sorted(outside)}"


def test_the_architecture_doc_draws_these_arrows():
    """docs/architecture.md's table of the subpackages lists, for each, the subpackages it imports: ARROWS."""
    text = (ROOT / "docs" / "architecture.md").read_text()
    rows = re.findall(r"^\| `(\w+)/` \| ([^|]*) \|", text, flags=re.MULTILINE)
    drawn = {name: set(re.findall(r"`(\w+)`", imports)) for name, imports in rows if name in ARROWS}
    assert drawn == ARROWS


def test_the_remote_code_imports_only_torch_transformers_and_itself():
    """The files that travel to the Hub run where only torch and transformers are installed: they import those, the
    standard library, and each other by relative imports (which transformers copies with them)."""
    for name in REMOTE_CODE:
        tree = ast.parse((ROOT / "modeling_mode" / f"{name}.py").read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level:
                assert node.level == 1 and node.module in REMOTE_CODE, f"{name}: from {'.' * node.level}{node.module}"
                continue
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                modules = [node.module]
            else:
                continue
            for module in modules:
                top = module.split(".")[0]
                assert top in ("torch", "transformers") or top in sys.stdlib_module_names, f"{name} imports {module}"
