"""A small, reusable compensation stack for sagas written as Temporal workflows.

Usage inside a workflow::

    stack = CompensationStack(records)
    stack.push("refund", lambda: workflow.execute_activity(...))   # before the action
    await action()
    ...
    except BusinessError:
        await stack.unwind()          # LIFO, each retried until it succeeds

Compensations run last-in-first-out, one at a time, each retried on durable timers until it
succeeds (every failure recorded, never dropped), shielded from the workflow's cancellation.
They must be idempotent and safe when there is nothing to undo: an action that timed out may
or may not have taken effect.
"""

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from temporalio import workflow
from temporalio.exceptions import ApplicationError

from domain.backoff import Backoff
from domain.payloads import StepRecord
from domain.status import RecordStatus

Compensation = Callable[[], Awaitable[Any]]
# Between attempts of one compensation.
COMPENSATION_BACKOFF = Backoff()


async def run_shielded(coro: Awaitable[Any], *, on_cancel: Callable[[], None] | None = None) -> Any:
    """Await ``coro`` to completion even if the calling workflow is cancelled: the work never
    sees the cancellation, ``on_cancel`` is told instead."""
    task = asyncio.ensure_future(coro)
    while not task.done():
        try:
            await workflow.wait([task])
        except asyncio.CancelledError:
            workflow.logger.info("Cancellation requested while shielded work runs; finishing it")
            if on_cancel is not None:
                on_cancel()
    return task.result()


class CompensationStack:
    """LIFO stack of compensations; records each run into a caller-owned list."""

    def __init__(
        self,
        records: list[StepRecord],
        *,
        backoff: Backoff = COMPENSATION_BACKOFF,
        on_retry: Callable[[StepRecord], None] | None = None,
    ) -> None:
        self._records = records
        self._backoff = backoff
        self._on_retry = on_retry
        self._stack: list[tuple[str, Compensation]] = []

    def push(self, name: str, compensation: Compensation) -> None:
        """Register the compensation of the action about to run (call it before the action)."""
        self._stack.append((name, compensation))

    def clear(self) -> None:
        """Forget every compensation: the saga passed its pivot and will not roll back."""
        self._stack.clear()

    async def unwind(self) -> None:
        """Run every pushed compensation in reverse order, shielded from cancellation."""
        await run_shielded(self._unwind())

    async def _unwind(self) -> None:
        while self._stack:
            name, compensation = self._stack.pop()
            await self._run_until_success(name, compensation)

    async def _run_until_success(self, name: str, compensation: Compensation) -> None:
        record = StepRecord(name=name, status=RecordStatus.RUNNING, started_at=workflow.now())
        self._records.append(record)
        while True:
            try:
                await compensation()
            except Exception as err:  # every failure is retried, never dropped
                record.status = RecordStatus.RETRYING
                record.error = describe_error(err)
                workflow.logger.warning(
                    "Compensation %s failed (attempt %d), retrying: %s",
                    name,
                    record.attempts,
                    record.error,
                )
                if self._on_retry is not None:
                    self._on_retry(record)
                await workflow.sleep(self._backoff.delay(record.attempts))
                record.attempts += 1
                continue
            record.status = RecordStatus.COMPLETED
            record.finished_at = workflow.now()
            return


def root_cause(err: BaseException) -> BaseException:
    """The innermost cause of ``err``: the activity's own failure inside Temporal's
    ``ActivityError`` wrapper, the ``ApplicationError`` of a business rule."""
    cause: BaseException = err
    while cause.__cause__ is not None:
        cause = cause.__cause__
    return cause


def describe_error(err: BaseException) -> str:
    """The innermost cause's message: what a person needs to read (not 'Activity task failed')."""
    cause = root_cause(err)
    if isinstance(cause, ApplicationError) and cause.type:
        return f"{cause.type}: {cause.message}"
    return f"{type(cause).__name__}: {cause}" if str(cause) else type(cause).__name__
