"""A decision or a report sent again, however often: the same answer, and nothing more for
the saga (no signal, no history event; in choreography no event), then 429 once one payment or
one delivery is asked too often. The order still ends as the first request said."""

import asyncio
from typing import Any

import httpx
from sqlmodel import col, func, select

from domain import names
from domain.status import SagaStyle
from store.db import session
from store.models import DeliveryRow, OutboxRow, PaymentDecisionRow
from tests.choreography.observe import eventually as until
from tests.e2e.conftest import Stack
from tests.e2e.test_api_saga import add_dealer, eventually
from tests.e2e.test_both_styles import a_city, place

REPEATS = 40  # twice what one payment (or delivery) may take a minute


async def sent_so_far(stack: Stack, order_id: str) -> int:
    """What the saga has received: its history's events (orchestration), or its order's
    events (choreography)."""
    if stack.style == SagaStyle.ORCHESTRATION:
        handle = stack.client.get_workflow_handle(names.workflow_id_for(order_id))
        return len((await handle.fetch_history()).events)
    with session(stack.engine) as db:
        return db.exec(select(func.count()).where(col(OutboxRow.order_id) == order_id)).one()


def signalled(stack: Stack, order_id: str) -> tuple[bool, bool]:
    """Whether the decision, and the report, are recorded as having reached the saga."""
    with session(stack.engine) as db:
        decision = db.get(PaymentDecisionRow, names.payment_id_for(order_id))
        delivery = db.get(DeliveryRow, names.delivery_id_for(order_id))
    return (
        decision is not None and decision.signalled_at is not None,
        delivery is not None and delivery.report_signalled_at is not None,
    )


async def settled_count(stack: Stack, order_id: str) -> int:
    """What the saga has received, once it has stopped growing for a moment."""
    last = await sent_so_far(stack, order_id)
    while True:
        await asyncio.sleep(0.3)
        now = await sent_so_far(stack, order_id)
        if now == last:
            return now
        last = now


async def repeat(stack: Stack, url: str) -> list[httpx.Response]:
    return list(await asyncio.gather(*(stack.http.post(url) for _ in range(REPEATS))))


def assert_same_or_throttled(answers: list[httpx.Response], order_id: str) -> None:
    codes = [a.status_code for a in answers]
    assert set(codes) <= {202, 429}, [(a.status_code, a.text) for a in answers]
    assert 429 in codes, codes  # more than the rate: some were refused
    for answer in answers:
        if answer.status_code == 202:
            assert answer.json()["order_id"] == order_id
        else:
            assert int(answer.headers["Retry-After"]) >= 1, answer.headers


async def test_repeated_decisions_and_reports_send_the_saga_nothing(styled: Stack) -> None:
    city = a_city()
    await add_dealer(styled, city)
    placed: dict[str, Any] = await place(styled, city=city)
    order_id, payment_id = placed["order_id"], placed["payment"]["payment_id"]
    first = await styled.http.post(f"/payments/{payment_id}/confirm")
    assert first.status_code == 202, first.text
    moving = await eventually(styled, order_id, lambda o: o["phase"] == "IN_TRANSIT")
    if styled.style == SagaStyle.ORCHESTRATION:
        await until(lambda: signalled(styled, order_id)[0], what="the decision's mark")
    before = await settled_count(styled, order_id)

    assert_same_or_throttled(await repeat(styled, f"/payments/{payment_id}/confirm"), order_id)
    assert await settled_count(styled, order_id) == before

    delivery_id = moving["delivery"]["delivery_id"]
    reported = await styled.http.post(f"/deliveries/{delivery_id}/delivered")
    assert reported.status_code == 202, reported.text
    delivered = await eventually(styled, order_id, lambda o: o["phase"] == "DELIVERED")
    assert delivered["status"] == "DELIVERED"
    if styled.style == SagaStyle.ORCHESTRATION:
        await until(lambda: signalled(styled, order_id)[1], what="the report's mark")
    after = await settled_count(styled, order_id)
    # The same report again, however often: answered alike (or throttled), sending nothing.
    assert_same_or_throttled(await repeat(styled, f"/deliveries/{delivery_id}/delivered"), order_id)
    assert await settled_count(styled, order_id) == after
    if styled.style == SagaStyle.ORCHESTRATION:
        saga = (await styled.http.get(f"/orders/{order_id}/saga")).json()
        # Every repeat was answered by the door: the saga heard each request once.
        assert [(s["name"], s["applied"]) for s in saga["signals"]] == [
            (names.SIGNAL_CONFIRM_PAYMENT, True),
            (names.SIGNAL_MARK_DELIVERED, True),
        ], saga["signals"]
