"""The credentials themselves: customer tokens (JWT HS256) issued and verified against the
configured secrets, and operator keys matched in constant time. No HTTP here."""

import hmac
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import jwt
from pydantic import SecretStr

TOKEN_AUDIENCE = "order-saga"
TOKEN_ALGORITHM = "HS256"
# Tolerated clock difference between the issuer of a token and this API.
TOKEN_LEEWAY = timedelta(seconds=30)


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
    """The customer id of ``token`` if one of ``secrets`` signed it (HS256 only) and it has
    not expired; :class:`InvalidTokenError` otherwise."""
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


def operator_key_matches(given: str, keys: Sequence[SecretStr]) -> bool:
    """Whether ``given`` (a header value, decoded as latin-1) is one of ``keys``, compared in
    constant time."""
    raw = given.encode("latin-1")  # the header's bytes (Starlette decoded them as latin-1)
    matched = False
    for key in keys:  # no early exit: the time taken does not say which key came close
        matched |= hmac.compare_digest(raw, key.get_secret_value().encode())
    return matched
