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

    A :class:`~domain.errors.BusinessError` of the service becomes a non-retryable
    ``ApplicationError`` of the same type: the saga compensates instead of retrying. Any
    other exception is an infrastructure failure and is retried.

    A cancellation never interrupts the step half-way: by default the SDK raises
    ``CancelledError`` inside a cancelled sync activity's thread, at whatever line it runs
    (for a local activity the moment its saga is cancelled). The step runs to its end
    instead, and the saga, which waits for it to settle, then compensates what it did.
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
    """A step's unit of work: one transaction, committed when the block ends, which must end
    within ``STEP_TRANSACTION_BUDGET``, far inside the attempt's start-to-close timeout, so an
    attempt Temporal gave up on cannot commit after the compensation that followed it."""
    return transaction(engine, budget=STEP_TRANSACTION_BUDGET)
