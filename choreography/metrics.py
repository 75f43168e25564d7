"""The choreographed saga's counters, named and labelled as the workflow's
(workflows/metrics.py), counted from the events its services commit: the saga starts with
``order_created`` and ends with ``order_delivered`` or ``order_cancelled``.
"""

from collections.abc import Sequence

from temporalio.common import MetricMeter

from domain import names
from domain.events import Event, EventType
from domain.status import SagaStyle

STYLE = SagaStyle.CHOREOGRAPHY.value


class SagaCounters:
    """Counts each saga's start, end and refund once, as the event saying so is committed
    (an event is committed once: a redelivered one finds its inbox row and emits nothing)."""

    def __init__(self, meter: MetricMeter) -> None:
        self._started = meter.create_counter(names.METRIC_STARTED, "Sagas started.")
        self._ended = meter.create_counter(names.METRIC_ENDED, "Sagas ended, by outcome.")
        self._refunded = meter.create_counter(
            names.METRIC_REFUNDED, "Cancelled sagas that refunded the payment."
        )

    def committed(self, events: Sequence[object]) -> None:
        """Count what ``events`` (just committed; a dead letter's replay is no Event) say."""
        for event in events:
            if not isinstance(event, Event):
                continue
            if event.type == EventType.ORDER_CREATED:
                self._started.add(1, {"style": STYLE})
            elif event.type == EventType.ORDER_DELIVERED:
                self._ended.add(1, {"style": STYLE, "outcome": "delivered"})
            elif event.type == EventType.ORDER_CANCELLED:
                reason = event.reason or "unknown"
                self._ended.add(1, {"style": STYLE, "outcome": "cancelled", "reason": reason})
            elif event.type == EventType.PAYMENT_REFUNDED:
                self._refunded.add(1, {"style": STYLE})
