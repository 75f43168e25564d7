"""Events outlive a deploy: every schema version still in flight is read by today's handlers.

``tests/events/v<N>/`` holds an event of each type as the builds writing version N wrote it
(version 1: every build before events carried a version). Each must be read, as today's
event with the same content, and one of the previous version, published to a real
``nats-server -js`` or left in the outbox by an older build, must be applied by today's
consumers. Retiring a version (its upgrade in ``domain/events.py``) is a deliberate step: its
samples go with it, or this test fails.
"""

import json
import uuid
from pathlib import Path

import nats
import pytest
from sqlalchemy import Engine
from sqlmodel import select

from domain.events import (
    EVENT_SCHEMA,
    READABLE_SCHEMAS,
    Event,
    EventType,
    UnreadableEventError,
    read_event,
)
from domain.status import PaymentStatus
from store.db import session
from store.models import InboxRow, OutboxRow, utcnow
from tests.choreography.live import running
from tests.choreography.observe import choreography_settings, eventually, payment_of
from tests.e2e.test_dead_letters import fix_the_missing_order
from tests.nats_server import NatsServer

SAMPLES = Path(__file__).resolve().parents[1] / "events"
IN_FLIGHT = sorted(int(folder.name.removeprefix("v")) for folder in SAMPLES.glob("v*"))


def samples(version: int) -> list[Path]:
    return sorted((SAMPLES / f"v{version}").glob("*.json"))


def test_every_version_in_flight_is_readable_and_each_has_every_event_type() -> None:
    assert EVENT_SCHEMA in IN_FLIGHT
    assert set(IN_FLIGHT) <= READABLE_SCHEMAS, "a version still in flight is not read any more"
    for version in IN_FLIGHT:
        assert {path.stem for path in samples(version)} == set(EventType), version


# Fields an older version carried that today's events do not (their content lives elsewhere:
# the payment window is kept with the order since version 3).
RETIRED_FIELDS = {"payment_window_seconds"}


@pytest.mark.parametrize("version", IN_FLIGHT)
def test_an_event_of_each_version_in_flight_reads_as_todays(version: int) -> None:
    for path in samples(version):
        written = json.loads(path.read_text())
        event = read_event(path.read_text())
        assert event.schema_version == EVENT_SCHEMA
        today = json.loads(event.model_dump_json())
        kept = {k: v for k, v in written.items() if k not in RETIRED_FIELDS}
        assert {k: v for k, v in today.items() if k != "schema_version"} == {
            k: v for k, v in kept.items() if k != "schema_version"
        }, path


def test_todays_events_carry_their_version_and_a_future_one_is_refused() -> None:
    event = Event(order_id=str(uuid.uuid4()), type=EventType.ORDER_CREATED, source="orders")
    assert json.loads(event.model_dump_json())["schema_version"] == EVENT_SCHEMA
    future = {**json.loads(event.model_dump_json()), "schema_version": EVENT_SCHEMA + 1}
    with pytest.raises(UnreadableEventError, match="not one this build reads"):
        read_event(future)


def v1_order_created(order_id: str) -> dict[str, object]:
    """An ``order_created`` as the builds before event versions wrote it."""
    sample = json.loads((SAMPLES / "v1" / "order_created.json").read_text())
    return {**sample, "event_id": str(uuid.uuid4()), "order_id": order_id}


def applied(engine: Engine, event_id: str) -> bool:
    with session(engine) as db:
        return db.exec(select(InboxRow).where(InboxRow.event_id == event_id)).first() is not None


async def test_events_of_the_previous_version_are_applied_by_todays_consumers(
    engine: Engine, server: NatsServer
) -> None:
    settings = choreography_settings(engine, server.url)
    published, left_behind = str(uuid.uuid4()), str(uuid.uuid4())
    for order_id in (published, left_behind):
        fix_the_missing_order(engine, order_id)  # the order an older build's door wrote
    in_stream = v1_order_created(published)
    in_outbox = v1_order_created(left_behind)
    with session(engine) as db:  # an older build's door committed it and died
        db.add(
            OutboxRow(
                event_id=str(in_outbox["event_id"]),
                message_id=str(in_outbox["event_id"]),
                order_id=left_behind,
                type="order_created",
                source="orders",
                body=json.dumps(in_outbox),
                created_at=utcnow(),
            )
        )
        db.commit()
    async with running(engine, settings, server) as live:
        connection = await nats.connect(server.url)
        try:  # an older build's relay published it, still unread
            await connection.jetstream().publish(
                EventType.ORDER_CREATED.subject,
                json.dumps(in_stream).encode(),
                headers={"Nats-Msg-Id": str(in_stream["event_id"])},
            )
        finally:
            await connection.close()
        for event in (in_stream, in_outbox):
            await eventually(
                lambda e=event: applied(engine, str(e["event_id"])),  # type: ignore[misc]
                what="PaymentService applies the version-1 event",
            )
        await live.settled()
    for order_id in (published, left_behind):
        payment = payment_of(engine, order_id)
        assert payment is not None
        assert payment.status == PaymentStatus.PENDING
