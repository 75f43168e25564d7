"""FastAPI application factory: ``uvicorn api.app:create_app --factory``.

The lifespan opens the process's parts (``bootstrap.py``); nothing connects at import time.
"""

import gc
import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

from fastapi import FastAPI
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send
from temporalio.client import Interceptor

from api.auth.openapi import document_security
from api.errors import install_error_handlers
from api.limits import BodySizeLimitMiddleware
from api.routes import codec, dead_letters, dealers, deliveries, health, orders, payments
from bootstrap import open_parts
from settings import Settings, load_settings
from telemetry import add_tracing_middleware, configure_tracing, tracing_interceptors

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider


class AuthNotConfiguredError(RuntimeError):
    """Auth is required (the default) but no credential is configured."""


class CodecCORS:
    """CORS for the codec server's paths alone: the Temporal Web UI (``TEMPORAL_UI_URL``)
    calls them from the browser; every other route stays same-origin."""

    def __init__(self, app: ASGIApp, ui_url: str) -> None:
        self._app = app
        self._cors = CORSMiddleware(
            app,
            allow_origins=[ui_url.rstrip("/")],
            allow_methods=["POST"],
            allow_headers=["Content-Type", "X-Namespace", "Authorization", "X-API-Key"],
            allow_credentials=True,
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith("/codec/"):
            await self._cors(scope, receive, send)
        else:
            await self._app(scope, receive, send)


def create_app(
    settings: Settings | None = None,
    *,
    tracer_provider: "TracerProvider | None" = None,
    temporal_interceptors: Sequence[Interceptor] = (),
) -> FastAPI:
    """Build the app (``settings``: the environment's by default). Raises
    :class:`AuthNotConfiguredError` when auth is required but has no credentials configured.
    Tracing is on with ``OTEL_EXPORTER`` or ``tracer_provider``.
    """
    settings = settings or load_settings("api")
    problem = settings.auth_problem()
    if problem is not None:
        # Fail at start, loudly: an API that forgot its credentials must not run open.
        raise AuthNotConfiguredError(f"the API refuses to start: {problem}")
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if settings.auth_mode == "dev":
        logging.getLogger("api").warning(
            "AUTH_MODE=dev: no credentials are checked; every caller may do everything"
        )
    tracer_provider = tracer_provider or configure_tracing(settings, "order-saga-api")

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Temporal lazily and NATS in the background: the API starts while either is down.
        parts = open_parts(
            settings,
            temporal="lazy",
            nats="background",
            migrate_schema=True,
            row_gauges=True,  # one process per deployment reads them: the API
            interceptors=[*tracing_interceptors(tracer_provider), *temporal_interceptors],
            tracer_provider=tracer_provider,
        )
        try:
            async with parts as app.state.services:
                # What the lifespan built lives as long as the process: out of the
                # collector's full passes (see worker.py).
                gc.collect()
                gc.freeze()
                yield
        finally:
            if tracer_provider is not None:
                tracer_provider.force_flush()

    app = FastAPI(
        title="Order saga on Temporal",
        version="0.1.0",
        description=(
            "Orders, payments and deliveries as one durable Temporal saga with compensations. "
            f"Temporal Web UI: {settings.temporal_ui_url}"
        ),
        lifespan=lifespan,
    )
    install_error_handlers(app)
    app.add_middleware(BodySizeLimitMiddleware, max_body_bytes=settings.max_body_bytes)
    app.add_middleware(CodecCORS, ui_url=settings.temporal_ui_url)
    add_tracing_middleware(app, tracer_provider)  # added last: the outermost middleware
    for router in (
        orders.router,
        payments.router,
        deliveries.router,
        dealers.router,
        dead_letters.router,
        codec.router,
        health.router,
    ):
        app.include_router(router)
    document_security(app, settings)
    return app
