"""The layers of executor/ (README, Architecture): no import circle, in-function imports included; engine/ imports
nothing of the layers above it; mining/ nothing of executor/; engine/ and pipeline/ read no environment variable."""
import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def modules(package: str) -> dict[str, Path]:
    found = {}
    for path in sorted((REPO / package).rglob("*.py")):
        name = ".".join(path.relative_to(REPO).with_suffix("").parts)
        found[name.removesuffix(".__init__")] = path
    return found


def imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The modules of `known` that `name` imports anywhere in its file (a package's face counts as itself)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = name.split(".")[:len(name.split(".")) - node.level + (path.name == "__init__.py")]
                base = ".".join(parts + ([base] if base else []))
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def graph() -> dict[str, set[str]]:
    known = {**modules("executor"), **modules("mining")}
    return {name: imports(name, path, known) for name, path in known.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while (w := stack.pop()) != v:
                on_stack.discard(w)
                component.append(w)
            on_stack.discard(v)
            if component:
                found.append(sorted(component + [v]))

    for v in edges:
        if v not in index:
            visit(v)
    return found


def test_no_import_circle():
    assert cycles(graph()) == []


def test_each_layer_imports_only_what_lies_under_it():
    above = {"executor.engine": ("executor.protocol", "executor.pipeline", "executor.report", "executor.cli",
                                 "executor.simulate", "executor.api"),
             "executor.protocol": ("executor.pipeline", "executor.report", "executor.cli", "executor.simulate"),
             "executor.report": ("executor.pipeline", "executor.cli", "executor.simulate"),
             "executor.pipeline": ("executor.cli", "executor.simulate"),
             "mining": ("executor",)}
    wrong = [f"{name} -> {target}" for name, targets in graph().items() for target in targets
             for layer, forbidden in above.items()
             if (name == layer or name.startswith(layer + ".")) and target.startswith(forbidden)]
    assert wrong == []


def test_engine_and_pipeline_read_no_environment_variable():
    readers = [f"{path.relative_to(REPO)}:{node.lineno}" for package in ("executor/engine", "executor/pipeline")
               for path in sorted((REPO / package).rglob("*.py"))
               for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
               if isinstance(node, ast.Attribute) and node.attr in ("environ", "getenv")
               and isinstance(node.value, ast.Name) and node.value.id == "os"]
    assert readers == []


def test_the_readme_map_names_every_module():
    """The README's architecture map lists each module of executor/ (a new module gets its line there)."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("## Architecture"):]
    section = section[:section.index("\n## ", 1)]
    listed = {line.split()[0] for line in section.splitlines() if line.startswith("executor/")}
    files = {str(path.relative_to(REPO)) for path in (REPO / "executor").rglob("*.py") if path.name != "__init__.py"}
    assert files - listed == set()
