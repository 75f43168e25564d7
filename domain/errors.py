"""Typed business failures. They are non-retryable: they compensate, they never retry.

The services raise :class:`BusinessError` (no Temporal types); the activities turn it into a
non-retryable ``ApplicationError`` of its type, as the workflow's own :func:`business_error`.
"""

from temporalio.exceptions import ApplicationError


class BusinessError(Exception):
    """A business rule refused the operation; ``error_type`` is one of ``names.BUSINESS_ERRORS``.

    Retrying cannot help: the caller compensates (or answers the client) instead.
    """

    def __init__(self, error_type: str, message: str) -> None:
        super().__init__(message)
        self.error_type = error_type
        self.message = message


def business_error(error_type: str, message: str) -> ApplicationError:
    """A non-retryable ApplicationError of ``error_type`` (one of ``names.BUSINESS_ERRORS``)."""
    return ApplicationError(message, type=error_type, non_retryable=True)
