"""/dead-letters: events of the choreographed saga that no delivery could apply (operators)."""

import uuid
from typing import Annotated

from fastapi import APIRouter, Query, status
from starlette.concurrency import run_in_threadpool

from api.auth.callers import AuthenticatedJSONRoute, Operator
from api.deps import ServicesDep
from api.errors import responses
from api.schemas import Problem
from domain.views import DeadLetterView, ReplayFilter, ReplayQueued
from sagas import views

router = APIRouter(
    prefix="/dead-letters", tags=["dead letters"], route_class=AuthenticatedJSONRoute
)


@router.get(
    "",
    response_model=list[DeadLetterView],
    operation_id="listDeadLetters",
    responses=responses(401, 403, 503),
)
async def list_dead_letters(
    services: ServicesDep,
    _caller: Operator,
    pending: Annotated[bool, Query(description="only those not replayed yet")] = True,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> list[DeadLetterView]:
    """Events a consumer failed to apply on every delivery, newest first, with the error."""
    return await run_in_threadpool(
        views.dead_letters, services.engine, pending_only=pending, limit=limit
    )


@router.post(
    "/replay",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=ReplayQueued,
    operation_id="replayDeadLetters",
    responses=responses(401, 403, 409, 413, 503),
)
async def replay_dead_letters(
    chosen: ReplayFilter,
    services: ServicesDep,
    _caller: Operator,
) -> ReplayQueued:
    """Deliver again every pending dead letter the filters match (every one for
    ``{"all": true}``), once what made them fail is fixed; each still applies at most once.
    Answers how many were queued: 0 when none was pending. 422 without a filter; 409 when no
    broker is configured."""
    return ReplayQueued(queued=await services.sagas.replay_dead_letters(chosen))


@router.post(
    "/{dead_letter_id}/replay",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=Problem,
    operation_id="replayDeadLetter",
    responses=responses(401, 403, 404, 409, 503),
)
async def replay_dead_letter(
    dead_letter_id: uuid.UUID,
    services: ServicesDep,
    _caller: Operator,
) -> Problem:
    """Deliver the event again to its consumer, once what made it fail is fixed; it still
    applies at most once. 404 unknown, 409 replayed already or no broker configured."""
    await services.sagas.replay_dead_letter(str(dead_letter_id))
    return Problem(detail=f"dead letter {dead_letter_id} queued for replay")
