"""The decision probe: a payment decision taken by a Temporal update with a validator.

The other way the issue weighed to take the customer's decision (the one the door does not
use): the API would call the update ``decide`` on the saga; its validator refuses a second
decision (the loser of a race gets the refusal, with no history event), and the handler
records the decision in the workflow. :class:`DecisionProbeWorkflow` is only that: it waits
for its decision (its window's timer running, as the saga's does) and ends once it has one.
The bench measures the client's ``execute_update`` against the API's confirm (a
compare-and-set in the database, then one signal): see ``tools/bench/decision.py``.

It runs on the baseline worker (``bench-baseline``). This module is loaded into the workflow
sandbox: it imports only the standard library and temporalio.
"""

from datetime import timedelta

from temporalio import workflow

PROBE_WORKFLOW_NAME = "BenchDecisionProbeWorkflow"
UPDATE_DECIDE = "decide"
DECISIONS = ("confirm", "cancel")
# The probe's decision window; the bench decides within a second.
PROBE_WINDOW = timedelta(minutes=10)


@workflow.defn(name=PROBE_WORKFLOW_NAME)
class DecisionProbeWorkflow:
    """Waits for one decision (update ``decide``) and returns it; ``timeout`` if none came
    within its window."""

    def __init__(self) -> None:
        self._decision: str | None = None

    @workflow.run
    async def run(self) -> str:
        try:
            await workflow.wait_condition(lambda: self._decision is not None, timeout=PROBE_WINDOW)
        except TimeoutError:
            return "timeout"
        assert self._decision is not None
        return self._decision

    @workflow.update(name=UPDATE_DECIDE)
    def decide(self, decision: str) -> str:
        """Take the decision (the validator let it through): the caller's answer is this."""
        self._decision = decision
        return decision

    @decide.validator
    def refuse_a_second_decision(self, decision: str) -> None:
        """Refused (no history event; the caller gets the reason) unless it is the first."""
        if decision not in DECISIONS:
            raise ValueError(f"unknown decision {decision!r}")
        if self._decision is not None:
            raise ValueError(f"already decided: {self._decision}")
