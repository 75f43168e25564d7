"""The choreographed saga's parts in one process: the broker, the streams, the consumers, the
relay and the sweepers (the worker runs them all; the API only publishes).
"""

import asyncio
import contextlib
import logging
from datetime import timedelta
from typing import Any

import nats
from faststream import AckPolicy
from faststream.nats import ConsumerConfig, JStream, NatsBroker, NatsMessage, PullSub
from opentelemetry.trace import Tracer
from sqlalchemy import Engine

from choreography.consumer import Consumer
from choreography.handlers import CONSUMERS, ROUTES
from choreography.metrics import SagaCounters
from choreography.outbox import Publisher, Relay
from choreography.sweepers import Sweepers
from domain.events import (
    DEAD_LETTER_PREFIX,
    DEAD_LETTER_STREAM,
    STREAM,
    SUBJECT_PREFIX,
    read_event,
)
from settings import Settings

log = logging.getLogger("choreography")

# How long JetStream drops a repeated message id (the inboxes catch anything later).
DUPLICATE_WINDOW = timedelta(minutes=10)


def streams(replicas: int) -> tuple[JStream, JStream]:
    """The event stream (one subject per event type) and the dead-letter stream."""
    return (
        JStream(
            STREAM,
            subjects=[f"{SUBJECT_PREFIX}.>"],
            duplicate_window=DUPLICATE_WINDOW.total_seconds(),
            num_replicas=replicas,
        ),
        JStream(
            DEAD_LETTER_STREAM,
            subjects=[f"{DEAD_LETTER_PREFIX}.>"],
            duplicate_window=DUPLICATE_WINDOW.total_seconds(),
            num_replicas=replicas,
        ),
    )


def servers(settings: Settings) -> list[str]:
    """The NATS servers of ``NATS_URL`` (comma-separated)."""
    return [url.strip() for url in (settings.nats_url or "").split(",") if url.strip()]


def connect_broker(settings: Settings) -> NatsBroker:
    """A broker for ``NATS_URL`` that declares both streams when it starts."""
    if settings.nats_url is None:
        raise RuntimeError("NATS_URL is not set: the choreographed saga needs its broker")
    broker = NatsBroker(
        servers(settings),
        max_reconnect_attempts=-1,  # a broker restart or failover is waited out, never fatal
        reconnect_time_wait=1,
        # At DEBUG: the order's event log is the record that matters.
        log_level=logging.DEBUG,
    )
    events, dead = streams(settings.nats_stream_replicas)
    # Publishers bound to the streams make the broker declare them on start.
    broker.publisher(f"{SUBJECT_PREFIX}.declare", stream=events)
    broker.publisher(f"{DEAD_LETTER_PREFIX}.declare", stream=dead)
    return broker


async def keep_connecting(broker: NatsBroker, *, every: float = 1.0) -> None:
    """Start ``broker`` (connect, declare the streams), trying again until it works: a
    process that only publishes (the API) must not fail to start while NATS is down."""
    while True:
        try:
            await broker.start()
            return
        except Exception as err:
            log.warning("NATS is not reachable yet (%s); trying again", err)
            await asyncio.sleep(every)


async def jetstream_answers(settings: Settings) -> None:
    """Raise unless one of ``NATS_URL``'s servers answers with JetStream enabled."""
    if settings.nats_url is None:
        raise RuntimeError("NATS_URL is not set")
    failures: list[Exception] = []

    async def quiet(err: Exception) -> None:  # the caller reports; no traceback per attempt
        failures.append(err)

    try:
        connection = await nats.connect(
            servers(settings),
            connect_timeout=2,
            # Each server tried (twice) and dropped: nats-py reads 0 here as "try forever".
            max_reconnect_attempts=1,
            reconnect_time_wait=0,
            allow_reconnect=False,
            error_cb=quiet,
        )
    except nats.errors.NoServersError:
        raise failures[-1] if failures else RuntimeError("no NATS server answered") from None
    try:
        await connection.jetstream().account_info()
    finally:
        await connection.close()


def is_connected(broker: NatsBroker) -> bool:
    """Whether ``broker`` has a live connection to NATS."""
    connection = getattr(broker, "_connection", None)
    return bool(connection is not None and connection.is_connected)


class Choreography:
    """Every consumer, the relay and the sweepers, on one broker connection."""

    def __init__(
        self,
        engine: Engine,
        settings: Settings,
        broker: NatsBroker,
        counters: SagaCounters | None = None,
        *,
        tracer: Tracer | None = None,
    ) -> None:
        self._engine = engine
        self.broker = broker
        self.publisher = Publisher(engine, broker, counters, tracer=tracer)
        self._tasks: list[asyncio.Task[None]] = []
        events, _dead = streams(settings.nats_stream_replicas)
        for (service, type), name in CONSUMERS.items():
            consumer = Consumer(
                name,
                ROUTES[service, type],
                engine,
                broker,
                self.publisher,
                max_deliveries=settings.event_max_deliveries,
            )
            broker.subscriber(
                type.subject,
                stream=events,
                durable=name,
                pull_sub=PullSub(batch_size=16, timeout=1.0),
                # No max_deliver: consumer.py decides when to dead-letter.
                config=ConsumerConfig(ack_wait=settings.event_ack_wait_seconds),
                ack_policy=AckPolicy.MANUAL,
            )(_subscribed(consumer))

    async def start(self) -> None:
        await self.broker.start()
        self._tasks = [
            asyncio.create_task(Relay(self.publisher).run(), name="outbox-relay"),
            asyncio.create_task(
                Sweepers(self._engine, self.publisher).run(),
                name="deadline-sweepers",
            ),
        ]
        log.info("choreography: %d consumers, the relay and the sweepers", len(CONSUMERS))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.broker.stop()


# A message this build cannot read waits for a build that can: redelivered this much later.
UNREADABLE_RETRY_SECONDS = 30.0


def _subscribed(consumer: Consumer):  # type: ignore[no-untyped-def]
    """The consumer as a FastStream handler, reading the event in any schema version still
    in flight."""

    async def handle(body: dict[str, Any], message: NatsMessage) -> None:
        try:
            event = read_event(body)
        except ValueError as err:  # UnreadableEventError, or a body that is no event
            log.error("%s: an event it cannot read, retried later: %s", consumer.name, err)
            await message.nack(delay=UNREADABLE_RETRY_SECONDS)
            return
        await consumer(event, message)

    handle.__name__ = consumer.name.replace("-", "_")
    return handle
