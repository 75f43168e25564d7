"""The activity decorator of every service step and compensation."""

from collections.abc import Callable
from typing import Any, TypeVar

from temporalio import activity

F = TypeVar("F", bound=Callable[..., Any])


def service_activity(name: str) -> Callable[[F], F]:
    """``@activity.defn(name=name)`` for a step that is one database transaction.

    A cancellation never interrupts it half-way: by default the SDK raises ``CancelledError``
    inside a cancelled sync activity's thread, at whatever line it runs (for a local activity
    the moment its saga is cancelled). The step runs to its end instead, and the saga, which
    waits for it to settle, then compensates what it did.
    """
    return activity.defn(name=name, no_thread_cancel_exception=True)
