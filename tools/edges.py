"""The hostile edges, measured on a running system (``make run``, auth off): what issue 21's
"done when" asks, as one command per check. Never asserted in a test: a measurement.

    python -m tools.edges burst                  # 1 MB of hostile numbers; /healthz meanwhile
    python -m tools.edges repeats                # 300 confirms of an IN_TRANSIT order
    python -m tools.edges races --orders 500     # confirms, window closes, cancels at once

``repeats`` reads the saga's history from Temporal (``TEMPORAL_ADDRESS``); ``races`` needs the
system running choreographed orders on PostgreSQL with a short payment window
(``SAGA_STYLE=choreography PAYMENT_WINDOW_SECONDS=5 DATABASE_URL=postgresql://...``) and
reads PostgreSQL's deadlock count from ``DATABASE_URL``.
"""

import argparse
import asyncio
import statistics
import sys
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from typing import Any

import httpx
from sqlalchemy import text

from domain import names
from settings import Settings
from store.db import make_engine

HOSTILE = [b"1e200000", b"-9.9E+999999", b"1e1000000", b"0e99999999", b"1" * 41]


async def _healthz_latencies(http: httpx.AsyncClient, stop: asyncio.Event) -> list[float]:
    seen = []
    while not stop.is_set():
        started = time.perf_counter()
        (await http.get("/healthz")).raise_for_status()
        seen.append(time.perf_counter() - started)
        await asyncio.sleep(0.01)
    return seen


async def burst(http: httpx.AsyncClient, megabytes: float) -> int:
    """Hostile numbers in every place a body holds one, about ``megabytes`` of them in all,
    sent 8 at a time, while /healthz is asked every 10 ms."""
    bodies = []
    for literal in HOSTILE:
        item = b'{"product_id": "p", "quantity": %s, "unit_price": %s}' % (literal, literal)
        bodies += [
            literal,
            b'{"customer_id": "c", "province": "T", "city": "T", "items": [' + item + b"]}",
            b'{"name": "n", "phone": "+1 555", "province": "T", "city": "T", "capacity": %s}'
            % literal,
            # One body of ~100 KB: the number repeated in a list until the first refuses it all.
            b"[" + b",".join([literal] * (100_000 // len(literal))) + b"]",
        ]
    sent, answers, slowest = 0, Counter[int](), 0.0
    stop = asyncio.Event()
    health = asyncio.create_task(_healthz_latencies(http, stop))
    headers = {"Content-Type": "application/json"}
    started = time.perf_counter()
    while sent < megabytes * 1024 * 1024:
        for at in range(0, len(bodies), 8):
            batch = bodies[at : at + 8]
            urls = ["/dealers" if b"capacity" in body else "/orders" for body in batch]
            timed = time.perf_counter()
            replies = await asyncio.gather(
                *(
                    http.post(u, content=b, headers=headers)
                    for u, b in zip(urls, batch, strict=True)
                )
            )
            slowest = max(slowest, time.perf_counter() - timed)
            answers.update(r.status_code for r in replies)
            sent += sum(len(b) for b in batch)
    took = time.perf_counter() - started
    stop.set()
    health_seconds = await health
    print(f"sent {sent / 1024 / 1024:.2f} MB in {sum(answers.values())} requests in {took:.1f} s")
    print(f"answers: {dict(sorted(answers.items()))}; slowest batch of 8: {slowest * 1000:.1f} ms")
    print(
        f"/healthz meanwhile: {len(health_seconds)} answers, "
        f"p50 {statistics.median(health_seconds) * 1000:.1f} ms, "
        f"max {max(health_seconds) * 1000:.1f} ms"
    )
    return 0 if set(answers) <= {413, 422} else 1


async def _poll(http: httpx.AsyncClient, order_id: str, phase: str, within: float = 60) -> Any:
    async with asyncio.timeout(within):
        while True:
            body = (await http.get(f"/orders/{order_id}")).json()
            if body["phase"] == phase:
                return body
            await asyncio.sleep(0.05)


async def _order(http: httpx.AsyncClient, city: str) -> dict[str, Any]:
    body = {
        "customer_id": f"edges-{uuid.uuid4().hex[:8]}",
        "items": [{"product_id": "book", "quantity": 1, "unit_price": "9.99"}],
        "province": "Tehran",
        "city": city,
    }
    placed = await http.post("/orders", json=body, headers={"Prefer": "wait=10"})
    placed.raise_for_status()
    result: dict[str, Any] = placed.json()
    return result


async def _dealer(http: httpx.AsyncClient, city: str, capacity: int) -> None:
    dealer = {"name": "Edges", "phone": f"+1 {uuid.uuid4().int % 10**9}", "province": "Tehran"}
    added = await http.post("/dealers", json={**dealer, "city": city, "capacity": capacity})
    added.raise_for_status()


async def repeats(http: httpx.AsyncClient, count: int) -> int:
    """One order to IN_TRANSIT, then ``count`` confirms of it: the saga's history before and
    after, the answers, and whether the order is then delivered."""
    from temporalio.client import Client

    from sagas.temporal import data_converter

    settings = Settings()
    client = await Client.connect(
        settings.temporal_address,
        namespace=settings.temporal_namespace,
        data_converter=data_converter(settings),
    )
    city = f"Edges {uuid.uuid4().hex[:6]}"
    await _dealer(http, city, 1)
    placed = await _order(http, city)
    payment_id, order_id = placed["payment"]["payment_id"], placed["order_id"]
    (await http.post(f"/payments/{payment_id}/confirm")).raise_for_status()
    moving = await _poll(http, order_id, "IN_TRANSIT")
    handle = client.get_workflow_handle(names.workflow_id_for(order_id))
    await asyncio.sleep(1)  # the first confirm's "signalled" mark is written after its answer
    before = len((await handle.fetch_history()).events)
    answers = Counter(
        r.status_code
        for r in await asyncio.gather(
            *(http.post(f"/payments/{payment_id}/confirm") for _ in range(count))
        )
    )
    await asyncio.sleep(1)
    after = len((await handle.fetch_history()).events)
    delivery_id = moving["delivery"]["delivery_id"]
    (await http.post(f"/deliveries/{delivery_id}/delivered")).raise_for_status()
    done = await _poll(http, order_id, "DELIVERED")
    print(
        f"{count} confirms of IN_TRANSIT order {order_id}: answers {dict(sorted(answers.items()))}"
    )
    print(f"history events before {before}, after {after}: {after - before} added")
    print(f"then reported delivered: {done['phase']}")
    return 0 if after == before and done["phase"] == "DELIVERED" else 1


def _deadlocks(settings: Settings) -> int:
    engine = make_engine(settings.database_url_value)
    try:
        with engine.connect() as connection:
            return int(
                connection.execute(
                    text(
                        "SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()"
                    )
                ).scalar_one()
            )
    finally:
        engine.dispose()


async def races(http: httpx.AsyncClient, orders: int) -> int:
    """``orders`` choreographed orders; at each one's window close, two confirms and an order
    cancel at once, while the payment sweeper closes it: 5xx answers, PostgreSQL deadlocks,
    and each order's outcome."""
    settings = Settings()
    before = _deadlocks(settings)
    city = f"Nowhere {uuid.uuid4().hex[:6]}"  # no dealer: a confirm that wins is refunded
    window = settings.payment_window_seconds
    answers: Counter[int] = Counter()
    confirmed: set[str] = set()  # orders a confirm was accepted for (202)

    async def race(order: dict[str, Any], placed_at: float, offset: float) -> None:
        """Around the order's window close (counted from its 201: ``offset`` seconds off it),
        two confirms and a cancel at once."""
        await asyncio.sleep(max(0.0, placed_at + window + offset - time.monotonic()))
        payment = f"/payments/{order['payment']['payment_id']}/confirm"
        cancel = f"/orders/{order['order_id']}/cancel"
        replies = await asyncio.gather(http.post(payment), http.post(payment), http.post(cancel))
        answers.update(r.status_code for r in replies)
        if 202 in (replies[0].status_code, replies[1].status_code):
            confirmed.add(order["order_id"])

    placed, racing = [], []
    for at in range(0, orders, 25):
        batch = await asyncio.gather(*(_order(http, city) for _ in range(at, min(at + 25, orders))))
        placed_at = time.monotonic()
        placed += batch
        racing += [
            asyncio.create_task(race(order, placed_at, -0.4 + 0.5 * (i % 25) / 25))
            for i, order in enumerate(batch)
        ]
    await asyncio.gather(*racing)
    outcomes: Counter[str] = Counter()
    # One outcome each: a payment refunded exactly when a confirm was accepted, cancelled
    # otherwise (by the window's TIMEOUT, or the order cancel, which records no decision).
    mismatched = []
    for order in placed:
        body = await _poll(http, order["order_id"], "CANCELLED", within=120)
        payment = body["payment"]
        outcomes[f"{payment['status']} ({payment['decision']})"] += 1
        won = payment["decision"] == "CONFIRM"
        if won != (order["order_id"] in confirmed) or won != (payment["status"] == "REFUNDED"):
            mismatched.append(order["order_id"])
    deadlocks = _deadlocks(settings) - before
    print(
        f"{orders} orders, {sum(answers.values())} racing requests: {dict(sorted(answers.items()))}"
    )
    print(f"outcomes (payment, decision): {dict(sorted(outcomes.items()))}")
    print(f"PostgreSQL deadlocks meanwhile: {deadlocks}; orders not ending one way: {mismatched}")
    five_xx = sum(n for code, n in answers.items() if code >= 500)
    return 0 if five_xx == 0 and deadlocks == 0 and not mismatched else 1


async def main_async(args: argparse.Namespace) -> int:
    async with httpx.AsyncClient(base_url=args.api, timeout=60) as http:
        if args.check == "burst":
            return await burst(http, args.megabytes)
        if args.check == "repeats":
            return await repeats(http, args.count)
        return await races(http, args.orders)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.edges", description=__doc__)
    parser.add_argument("check", choices=["burst", "repeats", "races"])
    parser.add_argument("--api", default="http://127.0.0.1:8000")
    parser.add_argument("--megabytes", type=float, default=1.0)
    parser.add_argument("--count", type=int, default=300)
    parser.add_argument("--orders", type=int, default=500)
    return asyncio.run(main_async(parser.parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
