"""The OpenAPI document declares exactly the auth schemes that are on (built, not served)."""

from typing import Any

import pytest
from pydantic import SecretStr

from api.app import create_app
from settings import Settings

CUSTOMER_CALLS = [
    "POST /orders",
    "POST /orders/{order_id}/cancel",
    "POST /payments/{payment_id}/confirm",
    "POST /payments/{payment_id}/cancel",
]
OPERATOR_CALLS = ["POST /deliveries/{delivery_id}/delivered", "POST /dealers"]


def spec_with(**update: Any) -> dict[str, Any]:
    app = create_app(Settings().model_copy(update=update))
    spec: dict[str, Any] = app.openapi()
    return spec


def security_of(spec: dict[str, Any]) -> dict[str, Any]:
    return {
        f"{method.upper()} {path}": op["security"]
        for path, ops in spec["paths"].items()
        for method, op in ops.items()
        if "security" in op
    }


def test_nothing_is_declared_when_auth_is_off() -> None:
    spec = spec_with()
    assert "securitySchemes" not in spec.get("components", {})
    assert security_of(spec) == {}


def test_api_keys_alone_guard_every_post() -> None:
    spec = spec_with(api_keys=[SecretStr("k")])
    assert set(spec["components"]["securitySchemes"]) == {"ApiKey"}
    assert security_of(spec) == {call: [{"ApiKey": []}] for call in CUSTOMER_CALLS + OPERATOR_CALLS}


def test_customer_tokens_alone_guard_the_customer_calls() -> None:
    spec = spec_with(customer_token_secret=SecretStr("s" * 16))
    assert set(spec["components"]["securitySchemes"]) == {"CustomerToken"}
    assert security_of(spec) == {call: [{"CustomerToken": []}] for call in CUSTOMER_CALLS}


@pytest.mark.parametrize("read", ["GET /orders", "GET /dealers", "GET /healthz", "GET /readyz"])
def test_reads_stay_open_with_everything_on(read: str) -> None:
    spec = spec_with(api_keys=[SecretStr("k")], customer_token_secret=SecretStr("s" * 16))
    assert read not in security_of(spec)
    assert security_of(spec)["POST /orders"] == [{"ApiKey": [], "CustomerToken": []}]
