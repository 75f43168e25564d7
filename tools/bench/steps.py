"""The saga's database work alone: its delivered path's eight steps, called one after the
other in this process on a fresh SQLite file, with no Temporal and no threads. Each order is
first accepted as the door accepts it, untimed and uncounted: its payment's decision opened
and the customer's confirm taken, so ``complete_payment`` finds it on record as it does
behind the API.

    python -m tools.bench.steps                 # 600 sagas after 30 uncounted
    python -m tools.bench.steps --sagas 2000

It prints the CPU milliseconds per saga (``time.process_time``: this process, so the steps'
Python, SQLAlchemy and SQLite work) and the SQL statements each step sends (BEGIN and COMMIT
not counted). That is the part of the worker's CPU per saga in ``make bench`` that the saga's
services cost over the baseline's no-op steps: the number to watch when changing a step's
statements (``docs/performance.md``). A measurement, never asserted: noisy on a shared machine,
so compare runs made one after the other.
"""

import argparse
import gc
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, event

from activities.deliveries import DeliveryActivities
from activities.orders import OrderActivities
from activities.payments import PaymentActivities
from domain import names
from domain.payloads import (
    CreateDeliveryInput,
    CreateOrderInput,
    CreatePaymentInput,
    DeliveryRef,
    OrderRef,
    PaymentRef,
)
from store.db import make_engine, migrate, session
from store.models import new_dealer, utcnow
from tools.bench.driver import door_accepts, door_confirms, order_request

PROVINCE = CITY = "Steps"


class Steps:
    """The eight steps of a delivered saga over one engine, each counted."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self.orders = OrderActivities(engine)
        self.payments = PaymentActivities(engine)
        self.deliveries = DeliveryActivities(engine)
        self.statements: Counter[str] = Counter()
        self._step = ""

        @event.listens_for(engine, "before_cursor_execute")
        def count(*_: Any) -> None:
            self.statements[self._step] += 1

    def accept(self, index: int) -> str:
        """What the door does for order ``index`` before its saga's steps, not counted as
        theirs: the payment's decision opened, and the customer's confirm taken (as the API
        does at once); returns the new order's id."""
        order_id = str(uuid.uuid4())
        self._step = ""
        door_accepts(self._engine, order_id, order_request(index).customer_id)
        door_confirms(self._engine, names.payment_id_for(order_id))
        return order_id

    def saga(self, index: int, order_id: str) -> None:
        """The steps of order ``index``'s saga (accepted by :meth:`accept`), in the order the
        saga runs them."""
        saga_id = str(uuid.uuid4())
        payment_id, delivery_id = names.payment_id_for(order_id), names.delivery_id_for(order_id)
        request = order_request(index).model_copy(update={"province": PROVINCE, "city": CITY})
        steps: list[tuple[str, Callable[[], object]]] = [
            (
                names.CREATE_ORDER,
                lambda: self.orders.create_order(
                    CreateOrderInput(order_id=order_id, request=request, saga_id=saga_id)
                ),
            ),
            (
                names.CREATE_PAYMENT,
                lambda: self.payments.create_payment(
                    CreatePaymentInput(
                        payment_id=payment_id,
                        order_id=order_id,
                        amount=request.total_amount,
                        expires_at=utcnow() + timedelta(minutes=5),
                        saga_id=saga_id,
                    )
                ),
            ),
            (
                names.COMPLETE_PAYMENT,
                lambda: self.payments.complete_payment(
                    PaymentRef(payment_id=payment_id, saga_id=saga_id)
                ),
            ),
            (
                names.CONFIRM_ORDER,
                lambda: self.orders.confirm_order(OrderRef(order_id=order_id, saga_id=saga_id)),
            ),
            (
                names.CREATE_DELIVERY,
                lambda: self.deliveries.create_delivery(
                    CreateDeliveryInput(
                        delivery_id=delivery_id,
                        order_id=order_id,
                        province=PROVINCE,
                        city=CITY,
                        saga_id=saga_id,
                    )
                ),
            ),
            (
                names.ASSIGN_DEALER,
                lambda: self.deliveries.assign_dealer(
                    DeliveryRef(delivery_id=delivery_id, saga_id=saga_id)
                ),
            ),
            (
                names.MARK_ORDER_DELIVERED,
                lambda: self.orders.mark_order_delivered(
                    OrderRef(order_id=order_id, saga_id=saga_id)
                ),
            ),
            (
                names.COMPLETE_DELIVERY,
                lambda: self.deliveries.complete_delivery(
                    DeliveryRef(delivery_id=delivery_id, saga_id=saga_id)
                ),
            ),
        ]
        for name, step in steps:
            self._step = name
            step()


def measure(folder: Path, sagas: int, warmup: int) -> tuple[float, Counter[str]]:
    """CPU milliseconds per saga, and the statements each step sent over ``sagas`` sagas."""
    engine = make_engine(f"sqlite:///{folder / 'steps.db'}")
    try:
        migrate(engine)
        with session(engine) as db:  # one dealer with room for every parcel of the run
            db.add(new_dealer("Steps Dealer", "+0-steps", PROVINCE, CITY, sagas + warmup))
            db.commit()
        steps = Steps(engine)
        for index in range(warmup):
            steps.saga(index, steps.accept(index))
        accepted = [steps.accept(index) for index in range(sagas)]  # the door's part, untimed
        steps.statements.clear()
        gc.collect()
        gc.freeze()  # as the worker does once it is built
        started = time.process_time()
        for index, order_id in enumerate(accepted):
            steps.saga(index, order_id)
        cpu_ms = (time.process_time() - started) * 1000 / sagas
        return cpu_ms, steps.statements
    finally:
        engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m tools.bench.steps",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--sagas", type=int, default=600, help="sagas measured")
    parser.add_argument("--warmup", type=int, default=30, help="sagas run first, not counted")
    args = parser.parse_args()
    if args.sagas < 1 or args.warmup < 0:
        parser.error("--sagas must be at least 1 and --warmup at least 0")
    with tempfile.TemporaryDirectory(prefix="steps-") as folder:
        cpu_ms, statements = measure(Path(folder), args.sagas, args.warmup)
    print(f"{'step':<22} statements/saga")
    for name, count in statements.items():
        print(f"{name:<22} {count / args.sagas:15.1f}")
    total = sum(statements.values()) / args.sagas
    print(f"steps: {cpu_ms:.2f} CPU ms/saga, {total:.1f} statements/saga")


if __name__ == "__main__":
    main()
