"""The package's shape: every import points down a fixed order of floors, and no import cycle within a floor
(deferred imports inside functions included)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "iclevr"

# The floors, lowest first (the README's Development map, docs/development.md). A module may import its own floor
# and the floors below; a module of a sub-package belongs to the floor of its longest listed prefix.
FLOORS: list[tuple[str, ...]] = [
    (
        "iclevr",
        "iclevr.errors",
        "iclevr.paths",
        "iclevr.seeding",
        "iclevr.progress",
        "iclevr.fileio",
        "iclevr.labels",
        "iclevr.images",
        "iclevr.device",
        "iclevr.settings",
        "iclevr.runinfo",
        "iclevr.ema",
        "iclevr.schedules",
    ),  # the ground floor
    ("iclevr.model", "iclevr.autoencoder", "iclevr.sampling", "iclevr.weights"),  # the model and its weights
    ("iclevr.generate", "iclevr.trace", "iclevr.export"),  # how a model is used
    ("iclevr.data",),  # kits, the renderer
    ("iclevr.training",),  # train(settings) -> run_dir
    ("iclevr.evaluation",),  # scoring (may use the lr shape)
    ("iclevr.studies", "iclevr.serve"),  # studies, the web page
    ("iclevr.cli", "iclevr.__main__"),  # the thin CLI on top
]


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
                return stack[stack.index(n) :] + [n]
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


def floor_of(module: str) -> int | None:
    """The index in FLOORS of `module` (its longest listed prefix), or None when no floor lists it."""
    best: tuple[int, int] | None = None
    for i, names in enumerate(FLOORS):
        for name in names:
            inside = module.startswith(name + ".") and name != "iclevr"  # the root package holds only itself
            if (module == name or inside) and (best is None or len(name) > best[1]):
                best = (i, len(name))
    return best[0] if best else None


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    """'a -> b' for every import from a lower floor to a higher one (and modules no floor lists)."""
    found = [f"{m} is on no floor" for m in sorted(graph) if floor_of(m) is None]
    return found + [
        f"{m} -> {n}"
        for m in sorted(graph)
        for n in sorted(graph[m])
        if None not in (floor_of(m), floor_of(n)) and floor_of(n) > floor_of(m)
    ]


def test_the_floor_check_finds_an_upward_import():
    assert upward_imports({"iclevr.weights": {"iclevr.training.lock"}, "iclevr.training.lock": set()}) == [
        "iclevr.weights -> iclevr.training.lock"
    ]
    assert upward_imports({"iclevr.cli.app": {"iclevr.model"}, "iclevr.model": set()}) == []
    assert upward_imports({"iclevr.newthing": set()}) == ["iclevr.newthing is on no floor"]


def test_every_import_points_down():
    up = upward_imports(import_graph())
    assert not up, "imports that point up the floors of tests/test_layout.py: " + "; ".join(up)


def test_the_metric_imports_nothing_from_iclevr():
    assert import_graph()["iclevr.evaluation.metric"] == set()


# The floors of the README's package map, lowest first: a module imports its own floor or lower ones only.
GROUND = {
    "iclevr.errors",
    "iclevr.runinfo",
    "iclevr.settings",
    "iclevr.fileio",
    "iclevr.labels",
    "iclevr.paths",
    "iclevr.seeding",
    "iclevr.device",
    "iclevr.images",
    "iclevr.progress",
}
UPWARD = {("iclevr.weights", "iclevr.training.lock")}  # the run finder asks whether a run without weights is
# still being trained (its lock holder) to say so; the lock module imports only the ground floor


def floor(module: str) -> int:
    """0 the ground floor, 1 the model and its use (every other top-level module), 2 the rooms training/,
    evaluation/ and data/, 3 studies/, 4 cli/, 5 the package itself and __main__."""
    if module in ("iclevr", "iclevr.__main__"):
        return 5
    for prefix, level in (
        ("iclevr.cli", 4),
        ("iclevr.studies", 3),
        ("iclevr.serve", 3),
        ("iclevr.training", 2),
        ("iclevr.evaluation", 2),
        ("iclevr.data", 2),
    ):
        if module == prefix or module.startswith(prefix + "."):
            return level
    return 0 if module in GROUND else 1


def test_arrows_point_down():
    up = sorted(
        (m, t) for m, targets in import_graph().items() for t in targets if floor(t) > floor(m) and (m, t) not in UPWARD
    )
    assert up == [], "imports pointing up a floor: " + "; ".join(f"{m} -> {t}" for m, t in up)
    assert (
        floor("iclevr.fileio")
        < floor("iclevr.weights")
        < floor("iclevr.training.loop")
        < floor("iclevr.studies.demo")
        < floor("iclevr.cli.train")
    )
    assert import_graph()["iclevr.training.lock"] <= GROUND  # why UPWARD's one exception is harmless
