"""What a caller of the door is told when it cannot do what was asked (no HTTP here)."""


class SagaError(Exception):
    """A request the door refuses; ``detail`` says why, for a person."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class NotFoundError(SagaError):
    """No such order, payment, delivery or saga."""


class ConflictError(SagaError):
    """The saga's state does not allow it (any more): already decided, past the pivot, ended."""


class IdempotencyKeyReusedError(SagaError):
    """The same Idempotency-Key with a different request."""


class TooManyRequestsError(SagaError):
    """Too many requests on one payment or delivery in a short time; ``retry_after``: seconds
    until the next is taken."""

    def __init__(self, detail: str, retry_after: float) -> None:
        super().__init__(detail)
        self.retry_after = retry_after
