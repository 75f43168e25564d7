"""The saga's metrics, emitted by the workflow through ``workflow.metric_meter()``.

Replay-safe and no Temporal command, so they never change what the workflow issues; served
by telemetry.py with ``METRICS_BIND_ADDRESS`` set. Every one carries ``style``, as the
choreographed saga's do (choreography/metrics.py).
"""

from datetime import timedelta

from temporalio import workflow

from domain import names
from domain.status import Decision, SagaPhase, SagaStyle

STYLE = SagaStyle.ORCHESTRATION.value


def count(name: str, **attributes: str) -> None:
    """Add one to the counter ``name`` (one of ``names.METRIC_*``) with ``attributes``."""
    counter = workflow.metric_meter().create_counter(name)
    counter.add(1, {"style": STYLE, **attributes})


def record_phase(phase: SagaPhase, spent: timedelta) -> None:
    """How long the saga spent in ``phase`` (recorded as it leaves it)."""
    workflow.metric_meter().create_histogram_timedelta(
        names.METRIC_PHASE, description="Time a saga spent in a phase.", unit="duration"
    ).record(spent, {"style": STYLE, "phase": phase.value})


def record_payment_wait(waited: timedelta, decision: Decision) -> None:
    """How long the customer took to decide (or the window to close)."""
    workflow.metric_meter().create_histogram_timedelta(
        names.METRIC_PAYMENT_WAIT,
        description="Time from the payment's creation to the decision (or the timeout).",
        unit="duration",
    ).record(waited, {"style": STYLE, "decision": decision.value})
