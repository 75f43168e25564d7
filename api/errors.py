"""Errors the API answers with, and the handlers that turn failures into clear 4xx/503s."""

import json
import logging
import math
import sqlite3
from collections.abc import Sequence
from decimal import Decimal
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from sqlalchemy.exc import (
    DataError,
    IntegrityError,
    InterfaceError,
    OperationalError,
    SQLAlchemyError,
)
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match
from temporalio.client import WorkflowQueryFailedError
from temporalio.service import RPCError

from api.limits import is_small_number
from domain.errors import BusinessError
from sagas.errors import (
    ConflictError,
    IdempotencyKeyReusedError,
    NotFoundError,
    SagaError,
    TooManyRequestsError,
)
from sagas.temporal import temporal_misconfiguration
from services.dealers import DealerExistsError

log = logging.getLogger("api")

_DESCRIPTIONS = {
    202: "Accepted: the saga has it; follow Location.",
    401: "No valid credential.",
    403: "Not allowed with this credential.",
    404: "No such resource.",
    409: "The saga's state does not allow it now.",
    413: "The request body is too large.",
    422: "Invalid request (each invalid field, or why it is refused).",
    429: "Too many requests on this resource; retry after Retry-After.",
    503: "A dependency (database or Temporal) is unavailable; retry after Retry-After.",
}


def responses(
    *codes: int, accepted_model: type[Any] | None = None
) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI ``responses`` of a route: every status code it can answer besides its
    success, each with the body it carries (so a schema-driven client expects no other)."""
    from api.schemas import InvalidRequest, Problem

    documented: dict[int | str, dict[str, Any]] = {}
    for code in codes:
        model: type[Any] = Problem
        if code == 422:
            model = InvalidRequest
        elif code == 202:
            assert accepted_model is not None, "a 202 needs its body's model"
            model = accepted_model
        entry: dict[str, Any] = {"model": model, "description": _DESCRIPTIONS[code]}
        if code in (429, 503):
            entry["headers"] = {
                "Retry-After": {"description": "Seconds to wait.", "schema": {"type": "integer"}}
            }
        documented[code] = entry
    return documented


# The door's refusals, as HTTP answers.
SAGA_ERROR_STATUS: dict[type[SagaError], int] = {
    NotFoundError: 404,
    ConflictError: 409,
    # The same Idempotency-Key with a different body: 422, as the IETF draft says.
    IdempotencyKeyReusedError: 422,
    TooManyRequestsError: 429,
}


# At most this many validation errors in a 422, and no input echoed longer than this (JSON).
MAX_VALIDATION_ERRORS = 5
MAX_ECHOED_INPUT = 80


def _echoable(value: Any, depth: int = 0) -> bool:
    """Whether ``value`` may be echoed in a 422: text, a number cheap to print, or a small
    container of them, so an error never costs more than its request."""
    if value is None or isinstance(value, bool):
        return True
    if isinstance(value, str):
        return len(value) <= MAX_ECHOED_INPUT
    if isinstance(value, int | float | Decimal):
        return is_small_number(value)
    if isinstance(value, list | tuple | dict) and depth < 2 and len(value) <= 8:
        items = value.items() if isinstance(value, dict) else enumerate(value)
        return all(_echoable(key, depth + 1) and _echoable(v, depth + 1) for key, v in items)
    return False


def _small_errors(errors: Sequence[Any]) -> list[dict[str, Any]]:
    small = []
    for error in list(errors)[:MAX_VALIDATION_ERRORS]:
        entry = {key: error[key] for key in ("type", "loc", "msg") if key in error}
        for key in ("input", "ctx"):  # what was sent, and the rule's details: when short
            if key not in error or not _echoable(error[key]):
                continue
            try:
                echoed = json.dumps(jsonable_encoder(error[key]), ensure_ascii=True)
            except (TypeError, ValueError):
                continue
            if len(echoed) <= MAX_ECHOED_INPUT:
                entry[key] = error[key]
        small.append(entry)
    return small


def unavailable(detail: str, retry_after: int = 2) -> JSONResponse:
    """503 with ``Retry-After``: a dependency is down or misconfigured; nothing was done."""
    return JSONResponse(
        {"detail": detail}, status_code=503, headers={"Retry-After": str(retry_after)}
    )


def _methods_of(app: FastAPI, request: Request) -> list[str]:
    """Every method some route serves at the request's path."""
    methods: set[str] = set()
    for route in app.router.routes:
        match, _ = route.matches(request.scope)
        if match != Match.NONE:
            methods |= set(getattr(route, "methods", None) or ())
    return sorted(methods)


def install_error_handlers(app: FastAPI) -> None:
    """Map domain and infrastructure failures to HTTP answers (never a bare 500)."""

    @app.exception_handler(RequestValidationError)
    async def _invalid_request(_request: Request, err: RequestValidationError) -> Response:
        # FastAPI's own 422, made small: a few errors, no large input echoed. ASCII-escaped,
        # so text with no UTF-8 form (a lone surrogate) is no 500.
        errors = err.errors()
        body: dict[str, Any] = {"detail": jsonable_encoder(_small_errors(errors))}
        if len(errors) > MAX_VALIDATION_ERRORS:
            body["omitted"] = len(errors) - MAX_VALIDATION_ERRORS
        return Response(
            json.dumps(body, ensure_ascii=True), status_code=422, media_type="application/json"
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, err: StarletteHTTPException) -> Response:
        if err.status_code == 405:
            # Starlette names only the methods of the first route on the path; list them all
            # (GET and POST /orders are two routes), as RFC 9110 asks of a 405's Allow.
            err.headers = {**(err.headers or {}), "Allow": ", ".join(_methods_of(app, request))}
        return await http_exception_handler(request, err)

    @app.exception_handler(SagaError)
    async def _saga_error(_request: Request, err: SagaError) -> JSONResponse:
        status = next(
            (code for kind, code in SAGA_ERROR_STATUS.items() if isinstance(err, kind)), 400
        )
        headers = None
        if isinstance(err, TooManyRequestsError):
            headers = {"Retry-After": str(max(1, math.ceil(err.retry_after)))}
        return JSONResponse({"detail": err.detail}, status_code=status, headers=headers)

    @app.exception_handler(DealerExistsError)
    async def _dealer_exists(_request: Request, err: DealerExistsError) -> JSONResponse:
        return JSONResponse({"detail": str(err)}, status_code=409)

    @app.exception_handler(BusinessError)
    async def _business_error(_request: Request, err: BusinessError) -> JSONResponse:
        # A business rule refused it (the state moved under the request): a conflict.
        return JSONResponse({"detail": err.message}, status_code=409)

    @app.exception_handler(RPCError)
    async def _temporal_error(_request: Request, err: RPCError) -> JSONResponse:
        mistake = temporal_misconfiguration(err)
        if mistake is not None:
            log.error("Temporal configuration: %s", mistake)
            return unavailable(mistake, retry_after=30)
        log.warning("Temporal call failed: %s (%s)", err.message, err.status)
        return unavailable(f"Temporal is unavailable: {err.message}")

    @app.exception_handler(WorkflowQueryFailedError)
    async def _query_failed(_request: Request, err: WorkflowQueryFailedError) -> JSONResponse:
        log.error("The saga could not answer a query: %s", err)
        return unavailable("the saga cannot answer right now; try again later", retry_after=5)

    @app.exception_handler(RuntimeError)
    async def _temporal_not_connected(_request: Request, err: RuntimeError) -> JSONResponse:
        # The API's Temporal client connects lazily, so the API can start while Temporal
        # is down; until it connects, calls fail with this RuntimeError.
        if "connect" not in str(err).lower():
            raise err
        log.warning("Temporal is not connected: %s", err)
        return unavailable("Temporal is unavailable")

    @app.exception_handler(SQLAlchemyError)
    @app.exception_handler(sqlite3.Error)
    async def _database_error(_request: Request, err: Exception) -> JSONResponse:
        # A value the database refuses is the request's fault (validation missed it), and a
        # constraint another request won is a conflict: neither is an outage.
        if isinstance(err, DataError | sqlite3.DataError):
            log.error("The database refused a value: %s", err, exc_info=err)
            return JSONResponse(
                {"detail": "a value of this request cannot be stored"}, status_code=422
            )
        if isinstance(err, IntegrityError | sqlite3.IntegrityError):
            log.error("A request conflicted with a constraint: %s", err, exc_info=err)
            return JSONResponse(
                {"detail": "this request conflicts with another one; try again"},
                status_code=409,
            )
        # Every other database failure is an outage: writes are single transactions, so the
        # client may safely retry.
        if isinstance(err, (OperationalError, InterfaceError, PoolTimeoutError)):
            log.warning("Database call failed: %s", err)
        else:
            log.error("Database call failed: %s", err, exc_info=err)
        return unavailable("the database is unavailable")
