"""The package's import graph: data flows one way, and no import (at module level or inside a function) closes
a cycle, so no import needs to hide in a function to load."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "scs_gan"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def import_graph() -> dict[str, set[str]]:
    """Module -> the package modules it imports anywhere in its body (functions included)."""
    modules = _modules()
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")
                    base = base[: len(base) - (node.level - 1)]
                    root = ".".join([*base, node.module] if node.module else base)
                else:
                    root = node.module or ""
                # `from pkg import sub` imports the submodule; `from pkg import name` imports pkg
                targets = [f"{root}.{a.name}" if f"{root}.{a.name}" in modules else root for a in node.names]
            for target in targets:
                if target in modules and target != name:
                    graph[name].add(target)
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start)):
            return found
    return None


def _reaches(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for nxt in graph[todo.pop()] - seen:
            seen.add(nxt)
            todo.append(nxt)
    return seen


def test_the_graph_is_read_correctly():
    graph = import_graph()
    assert "scs_gan.models" in graph["scs_gan.snapshot"]
    assert "scs_gan.training.checkpoint" in graph["scs_gan.training.trainer"]
    assert "scs_gan.nn.bench" in graph["scs_gan.cli"]  # a function-level import counts
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_no_import_cycle_even_counting_imports_inside_functions():
    assert _cycle(import_graph()) is None


def test_data_flows_one_way():
    graph = import_graph()
    assert not {m for m in _reaches(graph, "scs_gan.snapshot") if m.startswith(("scs_gan.training", "scs_gan.metrics"))}
    for lower in ("scs_gan.nn", "scs_gan.models", "scs_gan.data"):
        upstream = {m for m in _reaches(graph, lower) if m.startswith(("scs_gan.training", "scs_gan.metrics"))}
        assert not upstream, f"{lower} reaches {sorted(upstream)}"
    assert "scs_gan.cli" not in _reaches(graph, "scs_gan.training")


def test_the_readme_layout_names_every_part_of_the_package():
    readme = (PACKAGE.parent / "README.md").read_text(encoding="utf-8")
    layout = readme.split("## Layout", 1)[1].split("\n## ", 1)[0]
    parts = [p.name for p in PACKAGE.iterdir() if p.suffix == ".py" and not p.name.startswith("__")]
    parts += [f"scs_gan/{p.name}/" for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()]
    parts += [p.name for p in (PACKAGE / "training").glob("*.py") if not p.name.startswith("__")]
    missing = [p for p in parts if p not in layout]
    assert not missing, f"README's layout does not mention {missing}"


def test_training_and_generation_start_without_torchmetrics():
    """torchmetrics (with torchvision and scipy behind it) takes seconds to import: only scoring loads it."""
    import subprocess
    import sys

    code = (
        "import sys, scs_gan.cli, scs_gan.training, scs_gan.generate, scs_gan.metrics.weights, "
        "scs_gan.metrics.evaluate;"
        "print(sorted(m for m in ('torchmetrics', 'torchvision', 'scipy') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert done.stdout.strip() == "[]", done.stdout
