"""The composition root: each process's parts (its settings, the database engine, the Temporal
client, the NATS broker and the door to the sagas), built in one place and closed in order.

The API's lifespan, the worker, the CLI and the tools open the parts they need with
:func:`open_parts`; nothing else connects to anything.
"""

import asyncio
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import Literal

from faststream.nats import NatsBroker
from sqlalchemy import Engine
from temporalio.client import Client, Interceptor

from choreography.outbox import Publisher
from choreography.runtime import Choreography, connect_broker, keep_connecting
from sagas.door import Sagas
from sagas.temporal import connect_temporal
from settings import Settings
from store.db import make_engine, migrate

# How to reach Temporal: connect now (fail if it is down), lazily (the API starts while it is
# down), or not at all.
TemporalUse = Literal["now", "lazy", "none"]
# What to do with NATS (when NATS_URL is set): publish (connected now), publish once it
# answers (connected in the background: the API), run the choreographed saga's consumers,
# relay and sweepers on it (the worker), or nothing.
NatsUse = Literal["publish", "background", "consume", "none"]


@dataclass(frozen=True)
class Parts:
    """What a process runs on. ``client`` is None without Temporal, ``broker`` without NATS;
    the door places and steers the sagas of the styles it has a connection for."""

    settings: Settings
    engine: Engine
    client: Client | None
    broker: NatsBroker | None
    sagas: Sagas


@asynccontextmanager
async def open_parts(
    settings: Settings,
    *,
    temporal: TemporalUse = "now",
    nats: NatsUse = "publish",
    migrate_schema: bool = False,
    interceptors: Sequence[Interceptor] = (),
) -> AsyncIterator[Parts]:
    """Build the parts ``settings`` describe, and close them (the door's last writes, the
    broker, the engine) on exit. ``migrate_schema``: bring the database schema up to date
    first (the API and the worker do; several processes at once wait for each other).

    Raises ``TemporalConnectError`` (``temporal="now"``) when Temporal cannot be reached,
    and the broker's error (``nats="publish"`` or ``"consume"``) when NATS cannot."""
    async with AsyncExitStack() as stack:
        engine = make_engine(settings.database_url_value, **settings.engine_options())
        stack.callback(engine.dispose)
        if migrate_schema:
            await asyncio.to_thread(migrate, engine)
        client = (
            await connect_temporal(settings, lazy=temporal == "lazy", interceptors=interceptors)
            if temporal != "none"
            else None
        )
        broker, publisher = None, None
        if nats != "none" and settings.nats_url is not None:
            broker = connect_broker(settings)
            if nats == "consume":
                choreography = Choreography(engine, settings, broker)
                await choreography.start()
                stack.push_async_callback(choreography.stop)
                publisher = choreography.publisher
            else:
                stack.push_async_callback(broker.stop)
                if nats == "publish":
                    await broker.start()
                else:
                    connecting = asyncio.create_task(keep_connecting(broker))
                    stack.callback(connecting.cancel)
                publisher = Publisher(engine, broker)
        sagas = Sagas(engine, settings, client=client, publisher=publisher)
        stack.push_async_callback(sagas.aclose)
        yield Parts(settings, engine, client, broker, sagas)
