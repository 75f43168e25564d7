"""Limits on what a request may carry, checked before any handler runs.

``BodySizeLimitMiddleware`` (pure ASGI): a body over the limit is answered **413** before the
application sees it; a chunked body is read only up to the limit.

``StrictJSONRoute``: **422**, as for malformed JSON, for a repeated key (ambiguous), ``NaN``
and ``Infinity``, numbers longer than ``MAX_NUMBER_CHARS``, bytes that are not text and nesting
too deep to parse. Numbers with a fraction are read as exact decimals.
"""

import json
from collections.abc import Callable, Coroutine
from decimal import Decimal
from typing import Any

from fastapi import Request, Response
from fastapi.routing import APIRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

DEFAULT_MAX_BODY_BYTES = 1024 * 1024


class BodySizeLimitMiddleware:
    """Answer 413 to any HTTP request whose body exceeds ``max_body_bytes``."""

    def __init__(self, app: ASGIApp, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_body_bytes:
            await self._too_large(send)
            return
        # Count the body as it arrives, so a chunked body is stopped at the limit.
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                await self.app(scope, _replay([message], receive), send)
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                await self._too_large(send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body: Message = {"type": "http.request", "body": b"".join(chunks), "more_body": False}
        await self.app(scope, _replay([body], receive), send)

    async def _too_large(self, send: Send) -> None:
        payload = json.dumps(
            {"detail": f"request body is larger than {self.max_body_bytes} bytes"}
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(payload)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": payload})


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None  # the server refuses a malformed length before we are called
    return None


def _replay(messages: list[Message], receive: Receive) -> Receive:
    """A ``receive`` that returns ``messages`` first, then defers to the real one."""
    pending = list(messages)

    async def replay() -> Message:
        if pending:
            return pending.pop(0)
        return await receive()

    return replay


# No number in a request needs more digits than this, written out or by its exponent: a
# huge exponent costs quadratic time to convert, on the event loop.
MAX_NUMBER_CHARS = 40


def _reject_constant(name: str) -> Any:
    # Python's json reads NaN, Infinity and -Infinity, which are not JSON: refuse them.
    raise ValueError(f"{name} is not a JSON number")


def _bounded_int(text: str) -> int:
    if len(text) > MAX_NUMBER_CHARS:
        raise ValueError(f"a number of {len(text)} digits is too long")
    return int(text)


def _exact_decimal(text: str) -> Decimal:
    """A JSON number with a fraction or an exponent, as an exact decimal; refused before any
    conversion beyond :data:`MAX_NUMBER_CHARS` digits (written or by its exponent)."""
    if len(text) > MAX_NUMBER_CHARS:
        raise ValueError(f"a number of {len(text)} characters is too long")
    value = Decimal(text)
    if not -MAX_NUMBER_CHARS <= value.adjusted() <= MAX_NUMBER_CHARS:
        raise ValueError(f"a number's exponent must be within ±{MAX_NUMBER_CHARS}")
    return value


def is_small_number(value: object) -> bool:
    """Whether ``value`` is a number that :func:`_exact_decimal` would have read: one that is
    cheap to convert, compare and print."""
    if isinstance(value, bool) or not isinstance(value, int | float | Decimal):
        return False
    if isinstance(value, int):
        return value.bit_length() <= 4 * MAX_NUMBER_CHARS
    if isinstance(value, float):
        return True
    return value.is_finite() and -MAX_NUMBER_CHARS <= value.adjusted() <= MAX_NUMBER_CHARS


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    for key, value in pairs:
        if key in obj:
            raise json.JSONDecodeError(f"duplicate key {key!r}", "", 0)
        obj[key] = value
    return obj


class _StrictJSONRequest(Request):
    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            body = await self.body()
            try:
                self._json = json.loads(
                    body,
                    object_pairs_hook=_unique_keys,
                    parse_constant=_reject_constant,
                    parse_int=_bounded_int,
                    parse_float=_exact_decimal,
                )
            except json.JSONDecodeError:
                raise
            except (ValueError, RecursionError) as err:
                # Not JSON either: the same 422 as any other malformed JSON, not a bare 400.
                raise json.JSONDecodeError(f"{type(err).__name__}: {err}", "", 0) from err
        return self._json


class StrictJSONRoute(APIRoute):
    """A route whose JSON body may not repeat a key (FastAPI answers 422, like bad JSON)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def strict_handler(request: Request) -> Response:
            return await handler(_StrictJSONRequest(request.scope, request.receive))

        return strict_handler
