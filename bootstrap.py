"""The composition root: each process's parts (engine, Temporal client, NATS broker, the door
to the sagas), opened with :func:`open_parts` and closed in order; nothing else connects.
"""

import asyncio
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from faststream.nats import NatsBroker
from sqlalchemy import Engine
from temporalio.client import Client, Interceptor

from choreography.metrics import SagaCounters
from choreography.outbox import Publisher
from choreography.runtime import Choreography, connect_broker, keep_connecting
from sagas.door import Sagas
from sagas.gauges import SagaGauges
from sagas.temporal import connect_temporal
from settings import Settings
from store.db import make_engine, migrate
from telemetry import metrics_runtime, tracer

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider

# How to reach Temporal: connect now (fail if it is down), lazily (the API starts while it is
# down), or not at all.
TemporalUse = Literal["now", "lazy", "none"]
# What to do with NATS (when NATS_URL is set): publish (connected now), publish once it
# answers (the API), run the choreographed saga's parts (the worker), or nothing.
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
    tracer_provider: "TracerProvider | None" = None,
    row_gauges: bool = False,
) -> AsyncIterator[Parts]:
    """Build the parts ``settings`` describe (``migrate_schema``: the schema brought up to date
    first; ``tracer_provider``: the choreographed saga's events traced), and close them on
    exit. Raises ``TemporalConnectError`` (``temporal="now"``) or the broker's error
    (``nats="publish"`` or ``"consume"``) when one cannot be reached. With
    ``METRICS_BIND_ADDRESS`` set, the saga's gauges are served there: the rows' with
    ``row_gauges``, the consumers' lag with ``nats="consume"``."""
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
        runtime = metrics_runtime(settings.metrics_bind_address)
        counters = SagaCounters(runtime.metric_meter) if runtime is not None else None
        broker, publisher = None, None
        if nats != "none" and settings.nats_url is not None:
            broker = connect_broker(settings)
            if nats == "consume":
                choreography = Choreography(
                    engine, settings, broker, counters, tracer=tracer(tracer_provider)
                )
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
                publisher = Publisher(engine, broker, counters, tracer=tracer(tracer_provider))
        consuming = broker if nats == "consume" else None
        if runtime is not None and (row_gauges or consuming is not None):
            gauges = SagaGauges(engine, runtime.metric_meter, rows=row_gauges, broker=consuming)
            collecting = asyncio.create_task(gauges.run(), name="saga-gauges")
            stack.callback(collecting.cancel)
        sagas = Sagas(engine, settings, client=client, publisher=publisher)
        stack.push_async_callback(sagas.aclose)
        yield Parts(settings, engine, client, broker, sagas)
