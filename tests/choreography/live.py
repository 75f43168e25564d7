"""The choreography running in the test's process on a real ``nats-server -js`` (its consumers,
and with ``start`` its relay and sweepers), over the test's database, driven through its door
(``sagas.choreography.ChoreographedSagas``) as the API drives it."""

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import nats
from sqlalchemy import Engine

from choreography.runtime import Choreography, connect_broker
from domain import names
from domain.events import CONSUMERS, STREAM
from sagas import views
from sagas.choreography import ChoreographedSagas
from settings import Settings
from tests.choreography.observe import eventually, unpublished
from tests.nats_server import NatsServer
from tests.saga_harness import order_request


@dataclass
class Live:
    """A running choreography and its door."""

    engine: Engine
    settings: Settings
    server: NatsServer
    choreography: Choreography

    def door(self, **changes: Any) -> ChoreographedSagas:
        """The door, publishing through the choreography's publisher; ``changes`` to its
        settings (``payment_window_seconds``, say) apply to the orders it places."""
        settings = self.settings.model_copy(update=changes)
        return ChoreographedSagas(self.engine, settings, self.choreography.publisher)

    async def place(self, city: str, *, door: ChoreographedSagas | None = None) -> str:
        """Place an order and wait until PaymentService has written its payment; its id."""
        order_id = str(uuid.uuid4())
        placed = await (door or self.door()).place(
            order_request(city=city), None, order_id, wait=10
        )
        assert placed.view is not None, f"the payment of order {order_id} was never written"
        return order_id

    async def decide(self, order_id: str, *, confirm: bool) -> None:
        await self.door().decide_payment(names.payment_id_for(order_id), confirm=confirm)

    async def cancel(self, order_id: str) -> None:
        view = await asyncio.to_thread(views.order_view, self.engine, self.settings, order_id)
        assert view is not None
        await self.door().cancel(order_id, view)

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
