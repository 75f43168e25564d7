"""Errors the API answers with, and the handlers that turn failures into clear 4xx/503s."""

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from sqlalchemy.exc import InterfaceError, OperationalError
from temporalio.client import WorkflowQueryFailedError
from temporalio.service import RPCError, RPCStatusCode

log = logging.getLogger("api")


class ApiError(Exception):
    """An answer other than success, with the HTTP status it maps to."""

    status_code = 400

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class NotFoundError(ApiError):
    status_code = 404


class ConflictError(ApiError):
    status_code = 409


class IdempotencyKeyReusedError(ApiError):
    """The same Idempotency-Key with a different body (422, as the IETF draft says)."""

    status_code = 422


@contextmanager
def saga_ended_is_conflict(what: str) -> Iterator[None]:
    """A signal or cancel that reaches a saga that has ended meanwhile (or was terminated by
    an operator) is a 409 about ``what``, not a 503 telling the client to retry."""
    try:
        yield
    except RPCError as err:
        if err.status != RPCStatusCode.NOT_FOUND:
            raise
        raise ConflictError(f"{what}: its saga has ended") from err


def install_error_handlers(app: FastAPI) -> None:
    """Map domain and infrastructure failures to HTTP answers (never a bare 500)."""

    @app.exception_handler(RequestValidationError)
    async def _invalid_request(_request: Request, err: RequestValidationError) -> Response:
        # FastAPI's own 422, but ASCII-escaped: the errors echo the input, and text that has
        # no UTF-8 form (a lone surrogate, "\ud800" in the JSON) must not turn into a 500.
        body = json.dumps({"detail": jsonable_encoder(err.errors())}, ensure_ascii=True)
        return Response(body, status_code=422, media_type="application/json")

    @app.exception_handler(ApiError)
    async def _api_error(_request: Request, err: ApiError) -> JSONResponse:
        return JSONResponse({"detail": err.detail}, status_code=err.status_code)

    @app.exception_handler(RPCError)
    async def _temporal_error(_request: Request, err: RPCError) -> JSONResponse:
        log.warning("Temporal call failed: %s (%s)", err.message, err.status)
        return JSONResponse(
            {"detail": f"Temporal is unavailable: {err.message}"},
            status_code=503,
            headers={"Retry-After": "2"},
        )

    @app.exception_handler(WorkflowQueryFailedError)
    async def _query_failed(_request: Request, err: WorkflowQueryFailedError) -> JSONResponse:
        log.error("The saga could not answer a query: %s", err)
        return JSONResponse(
            {"detail": "the saga cannot answer right now; try again later"},
            status_code=503,
            headers={"Retry-After": "5"},
        )

    @app.exception_handler(RuntimeError)
    async def _temporal_not_connected(_request: Request, err: RuntimeError) -> JSONResponse:
        # The API's Temporal client connects lazily, so the API can start while Temporal
        # is down; until it connects, calls fail with this RuntimeError.
        if "connect" not in str(err).lower():
            raise err
        log.warning("Temporal is not connected: %s", err)
        return JSONResponse(
            {"detail": "Temporal is unavailable"}, status_code=503, headers={"Retry-After": "2"}
        )

    @app.exception_handler(OperationalError)
    @app.exception_handler(InterfaceError)
    async def _database_error(_request: Request, err: Exception) -> JSONResponse:
        log.warning("Database call failed: %s", err)
        return JSONResponse(
            {"detail": "the database is unavailable"}, status_code=503, headers={"Retry-After": "2"}
        )
