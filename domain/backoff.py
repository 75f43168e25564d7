"""Capped exponential backoff: how long to wait before the next attempt of something failing."""

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta

from temporalio.common import RetryPolicy


@dataclass(frozen=True)
class Backoff:
    """``initial`` after the first failure, ``coefficient`` times longer after each next one,
    never more than ``maximum``."""

    initial: timedelta = timedelta(seconds=1)
    coefficient: float = 2.0
    maximum: timedelta = timedelta(minutes=1)

    def delay(self, failed_attempts: int) -> timedelta:
        """The wait after ``failed_attempts`` failures (1: the first)."""
        # The exponent is capped before the power: a row failing for a year must not overflow.
        exponent = min(max(failed_attempts - 1, 0), 64)
        seconds = self.initial.total_seconds() * self.coefficient**exponent
        return min(timedelta(seconds=min(seconds, self.maximum.total_seconds())), self.maximum)

    def retry_policy(self, non_retryable: Sequence[str] = ()) -> RetryPolicy:
        """The same backoff as Temporal's retry policy of an activity, retried until it
        succeeds or fails with one of the ``non_retryable`` error types."""
        return RetryPolicy(
            initial_interval=self.initial,
            backoff_coefficient=self.coefficient,
            maximum_interval=self.maximum,
            non_retryable_error_types=list(non_retryable),
        )
