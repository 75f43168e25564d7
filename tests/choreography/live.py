"""The choreography running in the test's process on a real ``nats-server -js`` (its consumers,
and with ``start`` its relay and sweepers), over the test's database, driven through its door
(``sagas.door.Sagas``) as the API drives it."""

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import nats
from sqlalchemy import Engine

from choreography.handlers import CONSUMERS
from choreography.runtime import Choreography, connect_broker
from domain import names
from domain.events import STREAM
from domain.status import Decision
from sagas.door import Sagas
from settings import Settings
from tests.choreography.observe import choreographed_door, eventually, unpublished
from tests.nats_server import NatsServer
from tests.saga_harness import order_request


@dataclass
class Live:
    """A running choreography and its door."""

    engine: Engine
    settings: Settings
    server: NatsServer
    choreography: Choreography

    def door(self, **changes: Any) -> Sagas:
        """The door, publishing through the choreography's publisher; ``changes`` to its
        settings (``payment_window_seconds``, say) apply to the orders it places."""
        settings = self.settings.model_copy(update=changes)
        return choreographed_door(self.engine, settings, self.choreography.publisher)

    async def place(self, city: str, *, door: Sagas | None = None) -> str:
        """Place an order and wait until PaymentService has written its payment; its id."""
        placed = await (door or self.door()).place(order_request(city=city), None, wait=10)
        assert placed.view is not None, f"the payment of order {placed.order_id} never came"
        return placed.order_id

    async def decide(self, order_id: str, decision: Decision) -> None:
        await self.door().decide_payment(names.payment_id_for(order_id), decision)

    async def cancel(self, order_id: str) -> None:
        await self.door().cancel(order_id)

    async def report_delivered(self, order_id: str) -> None:
        await self.door().report_delivered(names.delivery_id_for(order_id))

    async def stream_messages(self) -> int:
        """How many messages the event stream holds."""
        connection = await nats.connect(self.server.url)
        try:
            info = await connection.jetstream().stream_info(STREAM)
            return int(info.state.messages)
        finally:
            await connection.close()

    async def settled(self, *, within: float = 15) -> None:
        """Wait until nothing is in flight, twice in a row: every consumer has acknowledged
        every message of the stream (none pending, none awaiting its ack or a redelivery)
        and every outbox row is published."""
        connection = await nats.connect(self.server.url)
        try:
            stream = connection.jetstream()
            calm: list[bool] = []

            async def idle() -> bool:
                for name in CONSUMERS.values():
                    info = await stream.consumer_info(STREAM, name)
                    if info.num_pending or info.num_ack_pending:
                        return False
                return await asyncio.to_thread(unpublished, self.engine) == 0

            deadline = time.monotonic() + within
            while len(calm) < 2 or not all(calm[-2:]):
                assert time.monotonic() < deadline, f"still busy after {within} s"
                calm.append(await idle())
                await asyncio.sleep(0.1)
        finally:
            await connection.close()

    async def until(self, probe: Callable[[], Any], what: str, *, within: float = 15) -> Any:
        """``eventually`` over this choreography's database."""
        return await eventually(probe, what=what, within=within)


@asynccontextmanager
async def running(
    engine: Engine, settings: Settings, server: NatsServer, *, start: bool = True
) -> AsyncIterator[Live]:
    """The choreography on ``server``: its consumers, and with ``start`` its relay and
    sweepers too (without: the test runs the sweepers it wants). Stopped on exit."""
    choreography = Choreography(engine, settings, connect_broker(settings))
    if start:
        await choreography.start()
    else:
        await choreography.broker.start()
    try:
        yield Live(engine=engine, settings=settings, server=server, choreography=choreography)
    finally:
        await choreography.stop()
