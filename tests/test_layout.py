"""The package's shape: no import cycle between iclevr's modules (deferred imports inside functions included)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "iclevr"


def module_name(path: Path) -> str:
    """iclevr/training/loop.py -> iclevr.training.loop (a package's __init__ -> the package)."""
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def import_graph() -> dict[str, set[str]]:
    """Module -> the iclevr modules it imports anywhere in its body."""
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [f"{node.module}.{a.name}" for a in node.names] + [node.module]
            for target in targets:
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                # importing a package's own __init__ from inside it is not an edge between rooms
                if target and target != name and not name.startswith(target + "."):
                    graph[name].add(target)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as a list of modules (first == last), or None."""
    colour = {m: 0 for m in graph}  # 0 new, 1 on the stack, 2 done
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        colour[m] = 1
        stack.append(m)
        for n in sorted(graph[m]):
            if colour[n] == 1:
                return stack[stack.index(n):] + [n]
            if colour[n] == 0 and (found := visit(n)):
                return found
        stack.pop()
        colour[m] = 2
        return None

    for m in sorted(graph):
        if colour[m] == 0 and (found := visit(m)):
            return found
    return None


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle_inside_the_package():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_metric_imports_nothing_from_iclevr():
    assert import_graph()["iclevr.evaluation.metric"] == set()


# The floors of the README's package map, lowest first: a module imports its own floor or lower ones only.
GROUND = {"iclevr.errors", "iclevr.settings", "iclevr.fileio", "iclevr.labels", "iclevr.paths", "iclevr.seeding",
          "iclevr.device", "iclevr.images", "iclevr.progress"}
UPWARD = {("iclevr.weights", "iclevr.training.lock")}  # the run finder asks whether a run without weights is
# still being trained (its lock holder) to say so; the lock module imports only the ground floor


def floor(module: str) -> int:
    """0 the ground floor, 1 the model and its use (every other top-level module), 2 the rooms training/,
    evaluation/ and data/, 3 studies/, 4 cli/, 5 the package itself and __main__."""
    if module in ("iclevr", "iclevr.__main__"):
        return 5
    for prefix, level in (("iclevr.cli", 4), ("iclevr.studies", 3), ("iclevr.training", 2),
                          ("iclevr.evaluation", 2), ("iclevr.data", 2)):
        if module == prefix or module.startswith(prefix + "."):
            return level
    return 0 if module in GROUND else 1


def test_arrows_point_down():
    up = sorted((m, t) for m, targets in import_graph().items() for t in targets
                if floor(t) > floor(m) and (m, t) not in UPWARD)
    assert up == [], "imports pointing up a floor: " + "; ".join(f"{m} -> {t}" for m, t in up)
    assert floor("iclevr.fileio") < floor("iclevr.weights") < floor("iclevr.training.loop") < floor(
        "iclevr.studies.demo") < floor("iclevr.cli.train")
    assert import_graph()["iclevr.training.lock"] <= GROUND  # why UPWARD's one exception is harmless
