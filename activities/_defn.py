"""What every service activity shares: its decorator and its unit of work."""

import functools
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any, TypeVar, cast

from sqlalchemy import Engine
from sqlmodel import Session
from temporalio import activity

from domain.errors import BusinessError, business_error
from domain.timeouts import STEP_TRANSACTION_BUDGET
from store.db import transaction

F = TypeVar("F", bound=Callable[..., Any])


def service_activity(name: str) -> Callable[[F], F]:
    """``@activity.defn(name=name)`` for a step that is one database transaction.

    A :class:`~domain.errors.BusinessError` becomes a non-retryable ``ApplicationError`` of
    its type (the saga compensates); any other exception is retried. A cancellation never
    interrupts the step half-way: it runs to its end, and the saga compensates what it did.
    """

    def decorate(fn: F) -> F:
        @functools.wraps(fn)
        def translated(*args: Any, **kwargs: Any) -> Any:
            try:
                return fn(*args, **kwargs)
            except BusinessError as err:
                raise business_error(err.error_type, err.message) from None

        return cast(F, activity.defn(name=name, no_thread_cancel_exception=True)(translated))

    return decorate


def step_transaction(engine: Engine) -> AbstractContextManager[Session]:
    """A step's unit of work: one transaction that must commit within
    ``STEP_TRANSACTION_BUDGET``, so an attempt Temporal gave up on cannot commit after the
    compensation that followed it."""
    return transaction(engine, budget=STEP_TRANSACTION_BUDGET)
