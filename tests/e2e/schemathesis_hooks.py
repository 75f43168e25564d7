"""Schemathesis hooks for the CLI runs of tests/e2e/test_schemathesis.py (SCHEMATHESIS_HOOKS).

- A generated Idempotency-Key repeats across cases with other bodies, which the API refuses
  with 422 by design (the same key for another request): a valid key is made unique per
  request, so a valid request is judged on itself. An invalid key stays as generated.
- With customer tokens, a customer places orders only in their own name (403 otherwise): a
  valid ``customer_id`` in ``POST /orders`` is set to the token's customer, so valid requests
  get through and the object-level checks have each customer's own orders to compare.
"""

import base64
import json
import re
import uuid
from typing import Any

import schemathesis
from pydantic import TypeAdapter, ValidationError

from domain.input import NO_CONTROL_CHARS, Identifier

HEADER = "Idempotency-Key"
IDENTIFIER = TypeAdapter(Identifier)


def _token_subject(headers: dict[str, Any]) -> str | None:
    """The ``sub`` of a bearer JWT in ``headers`` (read, not verified: the API verifies it)."""
    authorization = headers.get("Authorization") or headers.get("authorization")
    if not isinstance(authorization, str) or not authorization.startswith("Bearer "):
        return None
    try:
        payload = authorization.removeprefix("Bearer ").split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (IndexError, ValueError):
        return None
    subject = claims.get("sub")
    return subject if isinstance(subject, str) else None


def _valid_identifier(value: object) -> bool:
    try:
        IDENTIFIER.validate_python(value)
    except ValidationError:
        return False
    return True


@schemathesis.hook
def before_call(context: Any, case: Any, kwargs: dict[str, Any]) -> None:
    key = (case.headers or {}).get(HEADER)
    if isinstance(key, str) and 1 <= len(key) <= 200 and re.fullmatch(NO_CONTROL_CHARS, key):
        case.headers[HEADER] = f"st-{uuid.uuid4()}"
    body = case.body
    if case.operation.label == "POST /orders" and isinstance(body, dict):
        subject = _token_subject(case.headers or {})
        if subject is not None and _valid_identifier(body.get("customer_id")):
            body["customer_id"] = subject
