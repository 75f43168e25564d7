"""Who may do what. Every caller is someone: auth is on unless ``AUTH_MODE=dev``.

Two kinds of credential (``settings.py``):

- **Customer**: ``Authorization: Bearer <JWT>`` (HS256, ``sub`` = the customer id, ``aud``
  ``order-saga``, ``exp`` required), signed with the first of ``CUSTOMER_TOKEN_SECRETS`` and
  accepted when any of them verifies it, so a secret rotates by putting the new one first and
  dropping the old one once its tokens have expired (``python -m api.auth token <customer_id>``
  issues one). A customer credential is bound to that one customer: it places orders in their
  name, reads, confirms and cancels only their own orders and payments, and lists only theirs.
- **Operator**: ``X-API-Key: <key>``, one of ``OPERATOR_API_KEYS`` (several at once to
  rotate). Operators add and list dealers, report deliveries, cancel any order on behalf of
  the shop, list every order and read the saga's full state. They do not place orders or
  decide payments: those are the customer's.

Answers: no credential, or one that is malformed, expired or signed with an unknown secret,
**401** (with ``WWW-Authenticate``), before anything is looked up. A valid credential of the
wrong kind, or a customer's acting in another customer's name (placing an order, listing
orders), **403**. Another customer's order or payment is **404**, word for word what an
unknown id answers: a 403 there would tell a customer whether another's order exists (an
Idempotency-Key's order id is derived from the key). ``AUTH_MODE=dev``: no credential is
asked for and every caller may do everything; ``make run`` says so when it starts. Every
comparison of a secret is constant-time; no key, token or secret is ever logged or shown in a
repr.
"""

import argparse
import hmac
import sys
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Annotated, Any

import jwt
from fastapi import Depends, FastAPI, HTTPException, Request, Response, Security, status
from fastapi.security import APIKeyHeader, HTTPBearer
from pydantic import SecretStr

from api.deps import Services, ServicesDep
from api.limits import StrictJSONRoute
from api.schemas import Problem
from sagas.errors import NotFoundError
from settings import Settings

API_KEY_HEADER = "X-API-Key"
TOKEN_AUDIENCE = "order-saga"
TOKEN_ALGORITHM = "HS256"
# Tolerated clock difference between the issuer of a token and this API.
TOKEN_LEEWAY = timedelta(seconds=30)

# Documentation only: the schemes each route needs, in its OpenAPI security requirement.
# The credentials are read by ``authenticate`` itself, from the request's headers.
operator_key = APIKeyHeader(
    name=API_KEY_HEADER,
    scheme_name="OperatorKey",
    description="An operator key, one of OPERATOR_API_KEYS.",
    auto_error=False,
)
customer_token = HTTPBearer(
    scheme_name="CustomerToken",
    bearerFormat="JWT",
    description=(
        "A customer's token: a JWT (HS256) with sub = the customer id, aud = order-saga and "
        "exp, signed with one of CUSTOMER_TOKEN_SECRETS (`python -m api.auth token <id>`)."
    ),
    auto_error=False,
)

AUTH_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"model": Problem, "description": "No valid credential."},
    403: {"model": Problem, "description": "Not allowed with this credential."},
}
_CHALLENGE = {"WWW-Authenticate": f'Bearer, APIKey header="{API_KEY_HEADER}"'}


class Role(StrEnum):
    """What a caller is."""

    CUSTOMER = "customer"
    OPERATOR = "operator"
    # AUTH_MODE=dev: nobody is checked, so the caller may do what anyone may.
    DEVELOPER = "developer"


@dataclass(frozen=True)
class Caller:
    """The authenticated caller of a request."""

    role: Role
    customer_id: str | None = None  # a customer's own id

    @property
    def is_operator(self) -> bool:
        return self.role in (Role.OPERATOR, Role.DEVELOPER)

    def acts_for(self, customer_id: str) -> bool:
        """May act as ``customer_id`` (place, read, decide and cancel their orders)."""
        return self.role == Role.DEVELOPER or (
            self.role == Role.CUSTOMER and self.customer_id == customer_id
        )

    def may_see(self, customer_id: str) -> bool:
        """May read and cancel an order of ``customer_id``: its customer, or an operator."""
        return self.is_operator or self.acts_for(customer_id)


# --- customer tokens -----------------------------------------------------------------------


class InvalidTokenError(Exception):
    """The bearer token is not one of ours, or has expired (the message says which)."""


def issue_customer_token(
    secret: str, customer_id: str, ttl: timedelta, *, now: datetime | None = None
) -> str:
    """A customer token for ``customer_id``, valid for ``ttl`` from ``now``."""
    if not customer_id.strip():
        raise ValueError("a customer token needs a customer id")
    issued = now or datetime.now(UTC)
    claims = {"sub": customer_id, "aud": TOKEN_AUDIENCE, "iat": issued, "exp": issued + ttl}
    return jwt.encode(claims, secret, algorithm=TOKEN_ALGORITHM)


def verify_customer_token(secrets: Sequence[SecretStr], token: str) -> str:
    """The customer id of ``token`` if one of ``secrets`` signed it and it has not expired.

    Raises :class:`InvalidTokenError` otherwise. Only HS256 is accepted (never ``none``).
    """
    for secret in secrets:
        try:
            claims = jwt.decode(
                token,
                secret.get_secret_value(),
                algorithms=[TOKEN_ALGORITHM],
                audience=TOKEN_AUDIENCE,
                leeway=TOKEN_LEEWAY,
                options={"require": ["sub", "aud", "exp"]},
            )
        except jwt.InvalidSignatureError:
            continue  # perhaps signed with another of the secrets
        except jwt.ExpiredSignatureError:
            raise InvalidTokenError("the customer token has expired") from None
        except jwt.InvalidTokenError as err:
            raise InvalidTokenError(f"the customer token is not valid: {err}") from None
        customer_id = claims["sub"]
        if not isinstance(customer_id, str) or not customer_id:
            raise InvalidTokenError("the customer token names no customer")
        return customer_id
    raise InvalidTokenError("the customer token is not valid: unknown signature")


# --- dependencies --------------------------------------------------------------------------


def _key_matches(given: str, keys: Sequence[SecretStr]) -> bool:
    raw = given.encode("latin-1")  # the header's bytes (Starlette decoded them as latin-1)
    matched = False
    for key in keys:  # no early exit: the time taken does not say which key came close
        matched |= hmac.compare_digest(raw, key.get_secret_value().encode())
    return matched


def _unauthenticated(detail: str) -> HTTPException:
    return HTTPException(status.HTTP_401_UNAUTHORIZED, detail, headers=_CHALLENGE)


def forbidden(detail: str) -> HTTPException:
    return HTTPException(status.HTTP_403_FORBIDDEN, detail)


async def authenticate(request: Request, services: ServicesDep) -> Caller:
    """The caller of ``request``, from its one credential; 401 when it has none valid.

    Decided once per request (kept in its state): :class:`AuthenticatedJSONRoute` asks first.
    """
    known: Caller | None = getattr(request.state, "caller", None)
    if known is not None:
        return known
    caller = _identify(request, services.settings)
    request.state.caller = caller
    return caller


def _identify(request: Request, settings: Settings) -> Caller:
    if settings.auth_mode == "dev":
        return Caller(Role.DEVELOPER)
    key = request.headers.get(API_KEY_HEADER)
    authorization = request.headers.get("Authorization")
    if key is not None and authorization is not None:
        raise _unauthenticated(f"send one credential: {API_KEY_HEADER} or a bearer token")
    if key is not None:
        if not _key_matches(key, settings.operator_api_keys):
            raise _unauthenticated("this operator key is not valid")
        return Caller(Role.OPERATOR)
    if authorization is not None:
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise _unauthenticated("use 'Authorization: Bearer <customer token>'")
        try:
            customer_id = verify_customer_token(settings.customer_token_secrets, token.strip())
        except InvalidTokenError as err:
            raise _unauthenticated(str(err)) from None
        return Caller(Role.CUSTOMER, customer_id)
    raise _unauthenticated(
        f"a credential is required: a customer's 'Authorization: Bearer <token>' or an "
        f"operator's {API_KEY_HEADER}"
    )


CallerDep = Annotated[Caller, Depends(authenticate)]


class AuthenticatedJSONRoute(StrictJSONRoute):
    """A route whose caller is authenticated before its body is even parsed: without a valid
    credential the answer is 401, whatever the body holds (malformed JSON included), so
    nothing about the request is looked at for a caller who is nobody."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def authenticated(request: Request) -> Response:
            services: Services = request.app.state.services
            await authenticate(request, services)
            return await handler(request)

        return authenticated


async def _operator(
    caller: CallerDep, _documented: Annotated[str | None, Security(operator_key)]
) -> Caller:
    if not caller.is_operator:
        raise forbidden("this is an operator's call")
    return caller


async def _customer(
    caller: CallerDep,
    _documented: Annotated[Any, Security(customer_token)],
) -> Caller:
    if caller.role == Role.OPERATOR:
        raise forbidden("this is the customer's own call, not an operator's")
    return caller


async def _anyone(
    caller: CallerDep,
    _operator_documented: Annotated[str | None, Security(operator_key)],
    _customer_documented: Annotated[Any, Security(customer_token)],
) -> Caller:
    return caller


Operator = Annotated[Caller, Depends(_operator)]
"""An operator (403 for a customer)."""
Customer = Annotated[Caller, Depends(_customer)]
"""A customer acting for themselves (403 for an operator); check whose order with ``acts_for``."""
AnyCaller = Annotated[Caller, Depends(_anyone)]
"""A customer or an operator; check whose order with ``may_see``."""


def require_customer_of(caller: Caller, owner: str, what: str) -> None:
    """403 unless ``caller`` acts for ``owner``: for acting in a customer's name (``what``),
    where nothing is looked up."""
    if not caller.acts_for(owner):
        raise forbidden(f"this {what} belongs to another customer")


def hidden_unless_theirs(caller: Caller, owner: str, missing: str) -> None:
    """:class:`NotFoundError` (``missing``: what an unknown id is told) unless ``caller`` acts
    for ``owner``, the customer of what was found."""
    if not caller.acts_for(owner):
        raise NotFoundError(missing)


def hidden_unless_visible(caller: Caller, owner: str, missing: str) -> None:
    """:class:`NotFoundError` (``missing``: what an unknown id is told) unless ``caller`` is
    ``owner`` or an operator."""
    if not caller.may_see(owner):
        raise NotFoundError(missing)


def document_security(app: FastAPI, settings: Settings) -> None:
    """In ``AUTH_MODE=dev`` no call needs a credential: say so in the OpenAPI document too
    (a documented scheme would tell clients, and schema fuzzers, that calls without it fail).
    """
    if settings.auth_mode != "dev":
        return
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = build()
            for operation in (op for ops in schema["paths"].values() for op in ops.values()):
                operation.pop("security", None)
                for code in ("401", "403"):
                    operation.get("responses", {}).pop(code, None)
            schema.get("components", {}).pop("securitySchemes", None)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


# --- CLI -----------------------------------------------------------------------------------


MAX_TOKEN_TTL = 366 * 24 * 3600


def _lifetime(text: str) -> int:
    seconds = int(text)
    if not 0 < seconds <= MAX_TOKEN_TTL:
        raise argparse.ArgumentTypeError(f"must be between 1 and {MAX_TOKEN_TTL} seconds")
    return seconds


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m api.auth token <customer_id> [--ttl SECONDS]``: print a customer token,
    signed with the first of CUSTOMER_TOKEN_SECRETS."""
    parser = argparse.ArgumentParser(prog="python -m api.auth", description=main.__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    token = commands.add_parser("token", help="print a customer's bearer token")
    token.add_argument("customer_id")
    token.add_argument(
        "--ttl",
        type=_lifetime,
        help="lifetime in seconds, 1 to a year (default: CUSTOMER_TOKEN_TTL_SECONDS)",
    )
    args = parser.parse_args(argv)

    settings = Settings()
    if not settings.customer_token_secrets:
        print("CUSTOMER_TOKEN_SECRETS is not set: no customer token can be issued", file=sys.stderr)
        return 2
    customer_id = args.customer_id.strip()
    if not customer_id:
        parser.error("customer_id is empty")
    ttl = timedelta(
        seconds=args.ttl if args.ttl is not None else settings.customer_token_ttl_seconds
    )
    secret = settings.customer_token_secrets[0].get_secret_value()
    print(issue_customer_token(secret, customer_id, ttl))
    return 0


if __name__ == "__main__":
    sys.exit(main())
