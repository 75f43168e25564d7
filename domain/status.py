"""Status enums of the three entities and of the saga itself."""

from enum import StrEnum


class OrderStatus(StrEnum):
    """Order state machine: PENDING -> CONFIRMED -> DELIVERED; PENDING|CONFIRMED -> CANCELLED."""

    PENDING = "PENDING"
    CONFIRMED = "CONFIRMED"
    DELIVERED = "DELIVERED"
    CANCELLED = "CANCELLED"


class PaymentStatus(StrEnum):
    """Payment state machine: PENDING -> COMPLETED -> REFUNDED; PENDING -> CANCELLED."""

    PENDING = "PENDING"
    COMPLETED = "COMPLETED"
    REFUNDED = "REFUNDED"
    CANCELLED = "CANCELLED"


class DeliveryStatus(StrEnum):
    """Delivery state machine: PENDING -> IN_TRANSIT -> DELIVERED; PENDING -> CANCELLED.

    IN_TRANSIT -> CANCELLED only by the saga's compensation of an assignment it never saw.
    """

    PENDING = "PENDING"
    IN_TRANSIT = "IN_TRANSIT"
    DELIVERED = "DELIVERED"
    CANCELLED = "CANCELLED"


class SagaStyle(StrEnum):
    """How an order's saga runs: one coordinator (a Temporal workflow) or events between the
    services (NATS JetStream). Fixed per order when it is placed."""

    ORCHESTRATION = "orchestration"
    CHOREOGRAPHY = "choreography"


class ActivityRouting(StrEnum):
    """Where an orchestrated saga's steps run: on each service's own task queue (services
    scaled apart), or on the saga's own queue, served by the saga's worker, so Temporal hands
    each step to that worker in its reply to the workflow task (eager dispatch). Fixed per
    saga when it starts."""

    SERVICE = "service"
    WORKFLOW = "workflow"


class Decision(StrEnum):
    """What became of a payment's decision window: the customer confirmed or cancelled, or the
    window closed first. Exactly one of them is recorded, once (a compare-and-set)."""

    CONFIRM = "CONFIRM"
    CANCEL = "CANCEL"
    TIMEOUT = "TIMEOUT"

    @property
    def taken(self) -> str:
        """What the decision did to the payment, for a sentence: confirmed, cancelled, expired."""
        return {"CONFIRM": "confirmed", "CANCEL": "cancelled", "TIMEOUT": "expired"}[self.value]


class OrderSearchStatus(StrEnum):
    """Values of the ``OrderStatus`` search attribute (filter sagas in the Web UI): the order's
    status, or COMPENSATING while the saga unwinds (also while a compensation keeps failing)."""

    PENDING = OrderStatus.PENDING.value
    CONFIRMED = OrderStatus.CONFIRMED.value
    DELIVERED = OrderStatus.DELIVERED.value
    CANCELLED = OrderStatus.CANCELLED.value
    COMPENSATING = "COMPENSATING"


class SagaPhase(StrEnum):
    """Where the saga is; also what the workflow is waiting for."""

    STARTED = "STARTED"
    # Only in an order's view: the saga has accepted the order, its first steps have not
    # written the order and its payment yet.
    CREATING = "CREATING"
    AWAITING_PAYMENT = "AWAITING_PAYMENT"
    ASSIGNING_DEALER = "ASSIGNING_DEALER"
    IN_TRANSIT = "IN_TRANSIT"
    COMPENSATING = "COMPENSATING"
    DELIVERED = "DELIVERED"
    CANCELLED = "CANCELLED"


class RecordStatus(StrEnum):
    """Outcome of one saga step or compensation."""

    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    RETRYING = "RETRYING"
