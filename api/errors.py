"""Errors the API answers with, and the handlers that turn failures into clear 4xx/503s."""

import logging

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from sqlalchemy.exc import InterfaceError, OperationalError
from temporalio.service import RPCError

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


def install_error_handlers(app: FastAPI) -> None:
    """Map domain and infrastructure failures to HTTP answers (never a bare 500)."""

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

    @app.exception_handler(OperationalError)
    @app.exception_handler(InterfaceError)
    async def _database_error(_request: Request, err: Exception) -> JSONResponse:
        log.warning("Database call failed: %s", err)
        return JSONResponse(
            {"detail": "the database is unavailable"}, status_code=503, headers={"Retry-After": "2"}
        )
