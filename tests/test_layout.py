"""The layout's rules, checked in fresh interpreters: each concern is loaded only by what needs it."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

from tests.support import ROOT


def modules_after(code: str) -> list[str]:
    """The modules a fresh interpreter has loaded after running `code` in the project root."""
    script = f"{code}\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"
    command = [sys.executable, "-c", script]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


def test_importing_vault_core_loads_no_storage_backend():
    loaded = modules_after("import vault_core")
    assert "vault_core.stores.base" in loaded
    backends = ("vault_core.stores.local", "vault_core.stores.blob", "vault_core.stores.tables", "azure")
    assert not [m for m in loaded if m.startswith(backends)]


def test_a_blob_store_loads_the_tables_sdk_only_for_checkpoints():
    store = "import vault_core\nvault_core.open_store('UseDevelopmentStorage=true', container='orders')"
    loaded = modules_after(store)
    assert "vault_core.stores.blob" in loaded
    assert not [m for m in loaded if m.startswith(("vault_core.stores.tables", "azure.data.tables"))]
    with_checkpoints = modules_after(f"{store}.checkpoints('billing')")
    assert "vault_core.stores.tables" in with_checkpoints


def vault_core_imports() -> dict[str, set[str]]:
    """Each module of vault_core -> the modules of vault_core it imports anywhere: at the top, in
    a function, or for the type checker alone (a cycle there is a knot in the design all the
    same). `from . import name` counts as importing the module `name` where there is one."""
    package = ROOT / "vault_core"
    modules: dict[str, Path] = {}
    for path in package.rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    compiled = {".".join(p.relative_to(ROOT).with_suffix("").parts) for p in package.rglob("*.c")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        here = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        imported: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = here[: len(here) - node.level + 1] if node.level else []
                target = ".".join(base + ([node.module] if node.module else []))
                for alias in node.names:
                    module = f"{target}.{alias.name}"
                    if module not in compiled:
                        imported.add(module if module in modules else target)
        graph[name] = {m for m in imported if m in modules and m != name}
    return graph


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every cycle found by a depth-first walk, each once."""
    cycles: dict[frozenset[str], list[str]] = {}
    done: set[str] = set()

    def walk(module: str, path: list[str]) -> None:
        for imported in sorted(graph[module]):
            if imported in path:
                cycle = [*path[path.index(imported) :], imported]
                cycles.setdefault(frozenset(cycle), cycle)
            elif imported not in done:
                walk(imported, [*path, imported])
        done.add(module)

    for module in sorted(graph):
        walk(module, [module])
    return list(cycles.values())


def test_no_module_of_vault_core_imports_one_that_imports_it_back():
    graph = vault_core_imports()
    assert "vault_core.framing" in graph["vault_core.reader"]  # the walk sees real imports
    assert "vault_core.stores.local" in graph["vault_core.mirroring"]  # and those in functions
    assert [" -> ".join(cycle) for cycle in import_cycles(graph)] == []


def test_the_import_walk_finds_a_cycle_through_a_function():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert import_cycles(graph) == [["a", "b", "c", "a"]]
