"""Who may do what. Both checks are off unless configured, so ``make run`` needs neither.

**API keys** (``API_KEYS``): every mutating call (every POST) needs one of the keys in the
``X-API-Key`` header: missing, **401** with ``WWW-Authenticate``; wrong, **403**. Reads
(GET) and the health checks stay open. Several keys may be valid at once, so a key is
rotated by adding the new one, moving the clients, then removing the old one.

**Customer tokens** (``CUSTOMER_TOKEN_SECRET``): a customer's own calls carry
``Authorization: Bearer <customer_id>.<hex HMAC-SHA256(secret, customer_id)>``
(``python -m api.auth token <customer_id>`` prints one). Missing or invalid, **401**;
``POST /orders`` for another ``customer_id``, or a payment decision or order cancel on an
order the customer did not place, **403**. Dealers and deliveries are operator actions: the
API key alone. When both are on, a customer call needs both (the key names the client
application, the token the customer).

Order of the answers: the API key, then the token (401 before anything is looked up), then
the resource: an unknown payment or order is **404** and someone else's is **403**. The ids
are UUIDs no one can guess and ``GET /orders`` lists orders openly, so telling 404 from 403
reveals nothing a caller could not read anyway, and it tells an honest client its mistake.
An order whose saga has started but whose row is not written yet (a 202 from ``POST /orders``)
has no owner to check: its cancel is 404 until the row exists, normally milliseconds later.

Every comparison of a secret value is constant-time (``hmac.compare_digest``).
"""

import argparse
import hashlib
import hmac
import sys
import uuid
from collections.abc import Sequence
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Security, status
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from pydantic import SecretStr
from starlette.concurrency import run_in_threadpool

from api import queries
from api.deps import ServicesDep
from api.errors import NotFoundError
from api.schemas import Problem
from domain.payloads import OrderRequest
from settings import Settings

API_KEY_HEADER = "X-API-Key"

api_key_header = APIKeyHeader(
    name=API_KEY_HEADER,
    scheme_name="ApiKey",
    description="One of API_KEYS. Needed by every POST when API_KEYS is set.",
    auto_error=False,  # we answer 401/403 ourselves, and nothing at all when keys are off
)
customer_bearer = HTTPBearer(
    scheme_name="CustomerToken",
    description=(
        "A customer's token, `<customer_id>.<hex HMAC-SHA256>`; needed by a customer's own "
        "calls when CUSTOMER_TOKEN_SECRET is set (`python -m api.auth token <customer_id>`)."
    ),
    auto_error=False,
)

AUTH_RESPONSES: dict[int | str, dict[str, object]] = {
    401: {"model": Problem, "description": "Credentials missing or invalid (when auth is on)."},
    403: {"model": Problem, "description": "Not allowed with these credentials."},
}

_API_KEY_CHALLENGE = {"WWW-Authenticate": f'APIKey header="{API_KEY_HEADER}"'}


# --- customer tokens -----------------------------------------------------------------------


def _mac(secret: str, customer_id: str) -> str:
    return hmac.new(secret.encode(), customer_id.encode(), hashlib.sha256).hexdigest()


def issue_customer_token(secret: str, customer_id: str) -> str:
    """The bearer token of ``customer_id``: ``<customer_id>.<hex HMAC-SHA256(secret, id)>``."""
    if not customer_id:
        raise ValueError("a customer token needs a customer id")
    return f"{customer_id}.{_mac(secret, customer_id)}"


def verify_customer_token(secret: str, token: str) -> str | None:
    """The customer id a token was issued for, or None if it was not issued with ``secret``."""
    # The MAC is the part after the last dot, so a customer id may itself contain dots.
    customer_id, dot, mac = token.rpartition(".")
    if not (dot and customer_id):
        return None
    expected = _mac(secret, customer_id).encode()
    # Bytes, not str: compare_digest refuses a str that is not ASCII.
    if not hmac.compare_digest(expected, mac.encode()):
        return None
    return customer_id


# --- dependencies --------------------------------------------------------------------------


def _key_matches(given: str, keys: Sequence[SecretStr]) -> bool:
    raw = given.encode("latin-1")  # the header's bytes (Starlette decoded them as latin-1)
    matched = False
    for key in keys:  # no early exit: the time taken does not say which key came close
        matched |= hmac.compare_digest(raw, key.get_secret_value().encode())
    return matched


async def require_api_key(
    services: ServicesDep,
    key: Annotated[str | None, Security(api_key_header)],
) -> None:
    """Every mutating call: one of ``API_KEYS`` in ``X-API-Key`` (nothing when none is set)."""
    keys = services.settings.api_keys
    if not keys:
        return
    if not key:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            f"an API key is required in the {API_KEY_HEADER} header",
            headers=_API_KEY_CHALLENGE,
        )
    if not _key_matches(key, keys):
        raise HTTPException(status.HTTP_403_FORBIDDEN, "this API key is not valid")


OperatorKey = Depends(require_api_key)
"""For a route's ``dependencies=[...]``: the API key check (every POST has it)."""


def _header_text(value: str) -> str | None:
    """A header as the UTF-8 the client sent (Starlette decodes headers as latin-1), so a
    customer id that is not ASCII keeps working; None if the bytes are not UTF-8."""
    try:
        return value.encode("latin-1").decode("utf-8")
    except UnicodeError:
        return None


async def authenticated_customer(
    services: ServicesDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Security(customer_bearer)],
) -> str | None:
    """The customer id of the bearer token; None when customer auth is off."""
    secret = services.settings.customer_token_secret
    if secret is None:
        return None
    if credentials is None:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "a customer token is required: Authorization: Bearer <token>",
            headers={"WWW-Authenticate": "Bearer"},
        )
    token = _header_text(credentials.credentials)
    customer_id = None if token is None else verify_customer_token(secret.get_secret_value(), token)
    if customer_id is None:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "the customer token is not valid",
            headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
        )
    return customer_id


CustomerDep = Annotated[str | None, Depends(authenticated_customer)]


def _not_yours(what: str) -> HTTPException:
    return HTTPException(status.HTTP_403_FORBIDDEN, f"this {what} belongs to another customer")


async def require_order_placer(body: OrderRequest, customer: CustomerDep) -> None:
    """POST /orders: a customer places orders in their own name only."""
    if customer is not None and customer != body.customer_id:
        raise HTTPException(
            status.HTTP_403_FORBIDDEN, "the token's customer is not the order's customer_id"
        )


async def _require_owner(services: ServicesDep, customer: str | None, kind: str, key: str) -> None:
    """The customer placed the order behind ``kind`` ``key``: 404 unknown, 403 not theirs."""
    if customer is None:
        return
    lookup = {"order_id": key} if kind == "order" else {"payment_id": key}
    owner = await run_in_threadpool(queries.customer_of, services.engine, **lookup)
    if owner is None:
        raise NotFoundError(f"{kind} {key} does not exist")
    if owner != customer:
        raise _not_yours(kind)


async def require_order_owner(
    order_id: uuid.UUID, services: ServicesDep, customer: CustomerDep
) -> None:
    """POST /orders/{order_id}/cancel: the customer who placed the order (404 unknown)."""
    await _require_owner(services, customer, "order", str(order_id))


async def require_payment_owner(
    payment_id: uuid.UUID, services: ServicesDep, customer: CustomerDep
) -> None:
    """POST /payments/{payment_id}/...: the customer who placed its order (404 unknown)."""
    await _require_owner(services, customer, "payment", str(payment_id))


OrderPlacer = Depends(require_order_placer)
OrderOwner = Depends(require_order_owner)
PaymentOwner = Depends(require_payment_owner)


def document_security(app: FastAPI, settings: Settings) -> None:
    """Declare in the app's OpenAPI document the schemes that are on, and only those.

    A scheme that is off asks for nothing, so documenting it would tell clients (and schema
    fuzzers) that a call without it is refused. When both are on, a customer call needs both:
    one requirement naming the two (OpenAPI's AND), not FastAPI's list of either-or.
    """
    enabled = {
        name
        for name, on in (
            (api_key_header.scheme_name, bool(settings.api_keys)),
            (customer_bearer.scheme_name, settings.customer_token_secret is not None),
        )
        if on
    }
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = build()
            for operation in (op for ops in schema["paths"].values() for op in ops.values()):
                names = {n for req in operation.pop("security", []) for n in req if n in enabled}
                if names:
                    operation["security"] = [{name: [] for name in sorted(names)}]
            components = schema.get("components", {})
            schemes = {
                name: scheme
                for name, scheme in components.pop("securitySchemes", {}).items()
                if name in enabled
            }
            if schemes:
                components["securitySchemes"] = schemes
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


# --- CLI -----------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m api.auth token <customer_id>``: print a token (CUSTOMER_TOKEN_SECRET)."""
    parser = argparse.ArgumentParser(prog="python -m api.auth", description=main.__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    token = commands.add_parser("token", help="print the bearer token of a customer")
    token.add_argument("customer_id")
    args = parser.parse_args(argv)

    secret = Settings().customer_token_secret
    if secret is None:
        print("CUSTOMER_TOKEN_SECRET is not set: customer tokens are off", file=sys.stderr)
        return 2
    customer_id = args.customer_id.strip()
    if not customer_id:
        parser.error("customer_id is empty")
    print(issue_customer_token(secret.get_secret_value(), customer_id))
    return 0


if __name__ == "__main__":
    sys.exit(main())
