"""The saga's metrics, emitted by the workflow through ``workflow.metric_meter()``.

Replay-safe and no Temporal command, so they never change what the workflow issues; served
by telemetry.py with ``METRICS_BIND_ADDRESS`` set.
"""

from datetime import timedelta

from temporalio import workflow

from domain import names
from domain.status import Decision


def count(name: str, **attributes: str) -> None:
    """Add one to the counter ``name`` (one of ``names.METRIC_*``) with ``attributes``."""
    counter = workflow.metric_meter().create_counter(name, unit="1")
    counter.add(1, attributes or None)


def record_payment_wait(waited: timedelta, decision: Decision) -> None:
    """How long the customer took to decide (or the window to close), in ms."""
    workflow.metric_meter().create_histogram(
        names.METRIC_PAYMENT_WAIT,
        description="Time from the payment's creation to the decision (or the timeout).",
        unit="ms",
    ).record(int(waited.total_seconds() * 1000), {"decision": decision.value})
