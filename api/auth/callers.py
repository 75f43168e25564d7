"""Who the caller is: the dependencies that read a request's one credential, and the route
class that asks before the body is parsed (:mod:`api.auth` says who may do what)."""

from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from enum import StrEnum
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request, Response, Security, status
from fastapi.security import APIKeyHeader, HTTPBearer

from api.auth.tokens import InvalidTokenError, operator_key_matches, verify_customer_token
from api.deps import Services, ServicesDep
from api.limits import StrictJSONRoute
from sagas.errors import NotFoundError
from settings import Settings

API_KEY_HEADER = "X-API-Key"

# Documentation only (OpenAPI security): ``authenticate`` reads the headers itself.
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


# --- dependencies --------------------------------------------------------------------------


def _unauthenticated(detail: str) -> HTTPException:
    return HTTPException(status.HTTP_401_UNAUTHORIZED, detail, headers=_CHALLENGE)


def forbidden(detail: str) -> HTTPException:
    return HTTPException(status.HTTP_403_FORBIDDEN, detail)


async def authenticate(request: Request, services: ServicesDep) -> Caller:
    """The caller of ``request``, from its one credential, once per request; 401 when it has
    none valid."""
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
        if not operator_key_matches(key, settings.operator_api_keys):
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
    """A route whose caller is authenticated before its body is parsed: without a valid
    credential the answer is 401, whatever the body holds."""

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
