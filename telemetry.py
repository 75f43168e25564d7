"""Observability of the API and the worker: Prometheus metrics, OpenTelemetry tracing.

Metrics: with ``METRICS_BIND_ADDRESS`` set, the process's Temporal client (if any) runs on a
``temporalio.runtime.Runtime`` that serves Prometheus ``/metrics`` there: the SDK's own
``temporal_*`` metrics plus the saga's (``order_saga_*``: the workflow's, emitted replay-safe
through ``workflow.metric_meter()``, the choreography's and the gauges read from the rows),
named as Prometheus names them (counters ``_total``, durations in ``_seconds``). The SDK
allows one such runtime per bind address, so it is built once per process
(:func:`metrics_runtime` caches it).

Tracing (off by default; needs the ``otel`` extra): with ``OTEL_EXPORTER=console|otlp`` the
Temporal client carries ``TracingInterceptor`` (StartWorkflow, RunWorkflow, StartActivity,
RunActivity spans, propagated through Temporal headers) and the API wraps every request in a
server span, so one trace runs from the HTTP request through the saga's activities. The
choreographed saga carries the trace in W3C ``traceparent`` form: an outbox row keeps the
context of the transaction that wrote it, its message sends it as a header, and each consumer
continues it (:func:`current_traceparent`, :func:`context_of`).
"""

from __future__ import annotations

import os
import threading
from typing import TYPE_CHECKING, Any

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from temporalio.client import Interceptor
from temporalio.runtime import PrometheusConfig, Runtime, TelemetryConfig

from domain import names

if TYPE_CHECKING:
    from fastapi import FastAPI
    from opentelemetry.sdk.trace import TracerProvider

    from settings import Settings

TRACER_NAME = "order-saga"
# The W3C trace context header: an event's message carries its outbox row's value.
TRACEPARENT = "traceparent"
_W3C = TraceContextTextMapPropagator()
# The order a span of the choreographed saga works on (its events' spans carry it).
ORDER_ID_ATTRIBUTE = "order_saga.order_id"
# A phase (and the payment wait) lasts seconds to the 30-minute payment window, or days in
# transit: the SDK's default buckets stop at seconds.
SAGA_DURATION_BUCKETS_SECONDS = [1, 10, 60, 300, 900, 1800, 3600, 6 * 3600, 86400, 7 * 86400]

_lock = threading.Lock()
_runtimes: dict[str, Runtime] = {}
_tracer_provider: TracerProvider | None = None


def metrics_runtime(bind_address: str | None) -> Runtime | None:
    """The process's Runtime serving Prometheus on ``bind_address``; None when unset.

    Built once per bind address and reused: a second Prometheus runtime on the same
    address would fail to bind.
    """
    if not bind_address:
        return None
    with _lock:
        runtime = _runtimes.get(bind_address)
        if runtime is None:
            runtime = Runtime(
                telemetry=TelemetryConfig(
                    metrics=PrometheusConfig(
                        bind_address=bind_address,
                        # Prometheus's own conventions: foo_total, foo_seconds.
                        counters_total_suffix=True,
                        unit_suffix=True,
                        durations_as_seconds=True,
                        histogram_bucket_overrides={
                            names.METRIC_PAYMENT_WAIT: SAGA_DURATION_BUCKETS_SECONDS,
                            names.METRIC_PHASE: SAGA_DURATION_BUCKETS_SECONDS,
                        },
                    )
                )
            )
            _runtimes[bind_address] = runtime
        return runtime


def configure_tracing(settings: Settings, service_name: str) -> TracerProvider | None:
    """The process's tracer provider per ``OTEL_EXPORTER``; None when tracing is off.

    Built once per process and installed as the global provider. ``OTEL_SERVICE_NAME``, when
    set, wins over ``service_name``.
    """
    global _tracer_provider
    if settings.otel_exporter is None:
        return None
    with _lock:
        if _tracer_provider is not None:
            return _tracer_provider
        from opentelemetry import trace
        from opentelemetry.sdk.resources import SERVICE_NAME, Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import (
            BatchSpanProcessor,
            ConsoleSpanExporter,
            SpanExporter,
        )

        name = os.environ.get("OTEL_SERVICE_NAME") or service_name
        provider = TracerProvider(resource=Resource.create({SERVICE_NAME: name}))
        exporter: SpanExporter
        if settings.otel_exporter == "otlp":
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            exporter = OTLPSpanExporter(endpoint=settings.otel_exporter_otlp_endpoint)
        else:
            exporter = ConsoleSpanExporter()
        provider.add_span_processor(BatchSpanProcessor(exporter))
        trace.set_tracer_provider(provider)
        _tracer_provider = provider
        return provider


def tracing_interceptors(provider: TracerProvider | None) -> list[Interceptor]:
    """``[TracingInterceptor]`` on ``provider``'s tracer, for Client.connect; [] when off.

    On the client it also applies to every worker built with that client.
    """
    if provider is None:
        return []
    from temporalio.contrib.opentelemetry import TracingInterceptor

    return [TracingInterceptor(provider.get_tracer(TRACER_NAME))]


def add_tracing_middleware(app: FastAPI, provider: TracerProvider | None) -> None:
    """Open a server span per HTTP request (the parent of the StartWorkflow span)."""
    if provider is None:
        return
    from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware

    kwargs: dict[str, Any] = {"tracer_provider": provider, "exclude_spans": ["receive", "send"]}
    app.add_middleware(OpenTelemetryMiddleware, **kwargs)


def tracer(provider: TracerProvider | None) -> trace.Tracer | None:
    """``provider``'s tracer for the saga's own spans; None when tracing is off."""
    return provider.get_tracer(TRACER_NAME) if provider is not None else None


def current_traceparent() -> str | None:
    """The W3C ``traceparent`` of the current span; None when there is none (tracing off)."""
    if not trace.get_current_span().get_span_context().is_valid:
        return None
    carrier: dict[str, str] = {}
    _W3C.inject(carrier)
    return carrier.get(TRACEPARENT)


def context_of(traceparent: str | None) -> Context | None:
    """The context whose span a ``traceparent`` names; None for none or a malformed one."""
    if not traceparent:
        return None
    context = _W3C.extract({TRACEPARENT: traceparent})
    return context if trace.get_current_span(context).get_span_context().is_valid else None
