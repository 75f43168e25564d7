"""Smoke test of ``python -m tools.bench.steps``: its sagas run every step on a real SQLite
file, and it counts what each step sends. Never how fast: that is the tool's output."""

from pathlib import Path

from sqlmodel import select

from domain import names
from store.db import make_engine, session
from store.models import OrderRow
from tools.bench.steps import measure


def test_every_step_of_every_saga_runs_and_is_counted(tmp_path: Path):
    cpu_ms, statements = measure(tmp_path, sagas=3, warmup=1)

    assert cpu_ms > 0
    assert set(statements) == {
        names.CREATE_ORDER,
        names.CREATE_PAYMENT,
        names.COMPLETE_PAYMENT,
        names.CONFIRM_ORDER,
        names.CREATE_DELIVERY,
        names.ASSIGN_DEALER,
        names.MARK_ORDER_DELIVERED,
        names.COMPLETE_DELIVERY,
    }
    # Each step sends the same statements for every saga (the warm-up not counted).
    assert all(count % 3 == 0 for count in statements.values())
    engine = make_engine(f"sqlite:///{tmp_path / 'steps.db'}")
    with session(engine) as db:
        assert list(db.exec(select(OrderRow.status)).all()) == ["DELIVERED"] * 4
    engine.dispose()
