"""Typed business failures. They are non-retryable: they compensate, they never retry."""

from temporalio.exceptions import ApplicationError


def business_error(error_type: str, message: str) -> ApplicationError:
    """A non-retryable ApplicationError of ``error_type`` (one of ``names.BUSINESS_ERRORS``)."""
    return ApplicationError(message, type=error_type, non_retryable=True)
