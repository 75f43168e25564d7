"""The house's layers, read from the code's own imports (docs/architecture.md draws them).

Each room (a top-level package or module) may import only rooms on a lower floor, no module
import circle exists, and nothing imports the HTTP wing (``api/``): uvicorn loads its app
factory by name. Imports under ``if TYPE_CHECKING:`` count too.
"""

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Floors, lowest first: a room may import its own modules and rooms on lower floors only.
FLOORS: dict[str, int] = {
    "domain": 0,  # contracts: payloads, names, statuses, views (no I/O)
    "settings": 1,  # configuration, read once from the environment
    "versions": 1,  # the build id of the saga's code, and copies of it
    "workflows": 1,  # the orchestrated saga (Temporal and domain/ only)
    "store": 2,  # tables, engine, migrations runner
    "telemetry": 2,  # metrics and tracing setup
    "faults": 2,  # named fault points for the chaos run
    "services": 3,  # the business operations, once for both saga styles
    "migrations": 3,  # Alembic's scripts
    "activities": 4,  # Temporal adapters over services/
    "choreography": 4,  # event handlers over services/, outbox, relay, sweepers
    "sagas": 5,  # the door: start, steer and read sagas
    "bootstrap": 6,  # the composition root: each process's parts, built in one place
    "api": 7,  # HTTP: routes, auth, limits, errors
    "worker": 7,  # the worker process
    "cli": 7,  # the command line
    "tools": 8,  # the rigs: bench, chaos
}

# What starts an order's saga, steers it, or records a payment decision: the door's to call.
STEERING_CALLS = {
    "start_workflow",
    "execute_update_with_start_workflow",
    "signal",
    "signal_with_start_workflow",
    "open_decision",
    "take_decision",
    "withdraw_decision",
    "mark_decision_signalled",
}
# Who else may: the service that owns the decisions, the saga itself closing the payment's
# window (its activity, its sweeper), and the bench's baseline, a workflow of its own.
STEERING_ALLOWED = {"sagas", "services", "workflows", "activities", "choreography"}
STEERING_EXEMPT = {"tools.bench.baseline"}


def product_modules() -> dict[str, Path]:
    """Every module of the rooms above, by dotted name."""
    modules = {}
    for room in FLOORS:
        single = ROOT / f"{room}.py"
        paths = [single] if single.exists() else sorted((ROOT / room).rglob("*.py"))
        for path in paths:
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            modules[name] = path
    return modules


def imports_of(path: Path, modules: dict[str, Path]) -> Iterator[str]:
    """The product modules ``path`` imports (``from package import module`` names the module)."""
    name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    package = package.removesuffix(".__init__")
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [f"{base}.{alias.name}" for alias in node.names] + [base]
        else:
            continue
        for target in targets:
            if target in modules:
                yield target
                break


def graph() -> dict[str, set[str]]:
    modules = product_modules()
    return {name: set(imports_of(path, modules)) - {name} for name, path in modules.items()}


def room(module: str) -> str:
    return module.split(".")[0]


def test_every_room_imports_only_lower_floors() -> None:
    upward = sorted(
        f"{module} -> {target}"
        for module, targets in graph().items()
        for target in targets
        if room(target) != room(module) and FLOORS[room(target)] >= FLOORS[room(module)]
    )
    assert upward == []


def test_nothing_imports_the_http_wing() -> None:
    callers = sorted(
        module
        for module, targets in graph().items()
        if room(module) != "api" and any(room(t) == "api" for t in targets)
    )
    assert callers == []


def test_only_the_door_starts_steers_or_decides_a_saga() -> None:
    """No code outside ``sagas/`` starts an order's saga, signals it or writes a payment
    decision; only the worker, which runs the saga, imports its workflow."""
    past_the_door = []
    for name, path in product_modules().items():
        if room(name) in STEERING_ALLOWED or name in STEERING_EXEMPT:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            called = node.func if isinstance(node, ast.Call) else None
            if isinstance(called, ast.Attribute) and called.attr in STEERING_CALLS:
                past_the_door.append(f"{name}:{called.lineno} {called.attr}")
    assert past_the_door == []
    importers = {
        module
        for module, targets in graph().items()
        if room(module) not in STEERING_ALLOWED and any(room(t) == "workflows" for t in targets)
    }
    assert importers <= {"worker"}, importers


def test_the_service_layer_knows_neither_temporal_adapters_nor_the_door() -> None:
    for module, targets in graph().items():
        if room(module) == "services":
            assert {room(t) for t in targets} <= {"domain", "store", "services"}, module


def test_the_service_layer_builds_on_no_demo_data() -> None:
    seeded = sorted(m for m, targets in graph().items() if "store.seed" in targets)
    assert [m for m in seeded if room(m) == "services"] == []


def test_there_is_no_import_circle() -> None:
    edges = graph()
    state: dict[str, str] = {}
    path: list[str] = []

    def visit(module: str) -> None:
        state[module] = "open"
        path.append(module)
        for target in sorted(edges[module]):
            if state.get(target) == "open":
                raise AssertionError(" -> ".join([*path[path.index(target) :], target]))
            if target not in state:
                visit(target)
        path.pop()
        state[module] = "done"

    for module in sorted(edges):
        if module not in state:
            visit(module)


def test_the_map_knows_every_room_of_the_house() -> None:
    rooms = {
        path.stem if path.is_file() else path.name
        for path in ROOT.iterdir()
        if (path.is_file() and path.suffix == ".py")
        or (path.is_dir() and (path / "__init__.py").exists())
    }
    assert rooms - {"tests"} <= set(FLOORS), rooms - set(FLOORS)
