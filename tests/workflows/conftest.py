"""Every saga path runs in both step modes: the same assertions hold for each."""

import pytest

from domain.payloads import StepMode


@pytest.fixture(params=list(StepMode), ids=[mode.value for mode in StepMode])
def step_mode(request: pytest.FixtureRequest) -> StepMode:
    """``remote``: steps are regular activities on the service queues; ``local``: local
    activities in the workflow worker."""
    mode: StepMode = request.param
    return mode
