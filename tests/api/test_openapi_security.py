"""Who may call each route, as the OpenAPI document declares it (built, not served).

``ACCESS`` is the decision for every route of the app; a route added without one fails
``test_every_route_of_the_app_has_an_access_decision`` (tests/e2e/test_auth.py checks the same
matrix over HTTP).
"""

from enum import StrEnum
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.routing import iter_route_contexts
from pydantic import SecretStr

from api.app import AuthNotConfiguredError, create_app
from settings import Settings

OPERATOR_KEY = "openapi-test-operator-key-0123"
TOKEN_SECRET = "openapi-test-customer-token-secret-0123456789"


class Access(StrEnum):
    """Who may call a route."""

    PUBLIC = "public"  # anyone, no credential
    OPERATOR = "operator"  # an operator key only
    CUSTOMER = "customer"  # the customer concerned, with their token only
    EITHER = "either"  # the customer concerned, or an operator


ACCESS: dict[str, Access] = {
    "POST /orders": Access.CUSTOMER,
    "POST /orders/create_order": Access.CUSTOMER,  # the hidden alias of POST /orders
    "GET /orders": Access.EITHER,
    "GET /orders/{order_id}": Access.EITHER,
    "GET /orders/{order_id}/saga": Access.OPERATOR,
    "GET /orders/stuck": Access.OPERATOR,
    "POST /orders/{order_id}/cancel": Access.EITHER,
    "POST /payments/{payment_id}/confirm": Access.CUSTOMER,
    "POST /payments/{payment_id}/cancel": Access.CUSTOMER,
    "POST /deliveries/{delivery_id}/delivered": Access.OPERATOR,
    "GET /dealers": Access.OPERATOR,
    "POST /dealers": Access.OPERATOR,
    "GET /dead-letters": Access.OPERATOR,
    "POST /dead-letters/{dead_letter_id}/replay": Access.OPERATOR,
    "POST /dead-letters/replay": Access.OPERATOR,
    "POST /codec/decode": Access.OPERATOR,
    "POST /codec/encode": Access.OPERATOR,
    "GET /healthz": Access.PUBLIC,
    "GET /readyz": Access.PUBLIC,
    "GET /openapi.json": Access.PUBLIC,
    "GET /docs": Access.PUBLIC,
    "GET /docs/oauth2-redirect": Access.PUBLIC,
    "GET /redoc": Access.PUBLIC,
}
HIDDEN = {"POST /orders/create_order"}  # served, not in the OpenAPI document
# FastAPI's own pages (the document, Swagger UI, ReDoc): served, not documented.
FASTAPI_PAGES = {"GET /openapi.json", "GET /docs", "GET /docs/oauth2-redirect", "GET /redoc"}
DOCUMENTED = set(ACCESS) - HIDDEN - FASTAPI_PAGES
SECURITY: dict[Access, list[dict[str, list[str]]] | None] = {
    Access.PUBLIC: None,
    Access.OPERATOR: [{"OperatorKey": []}],
    Access.CUSTOMER: [{"CustomerToken": []}],
    Access.EITHER: [{"OperatorKey": []}, {"CustomerToken": []}],  # either one
}


def route_keys(app: FastAPI) -> set[str]:
    """``"METHOD /path"`` of every route the app serves (HEAD aside), the hidden ones too."""
    keys = set()
    for route in iter_route_contexts(app.routes):
        for method in route.methods or ():
            if method != "HEAD":
                keys.add(f"{method} {route.path}")
    return keys


def secured_settings(**changes: Any) -> Settings:
    fields: dict[str, Any] = {
        "auth_mode": "required",
        "operator_api_keys": [SecretStr(OPERATOR_KEY)],
        "customer_token_secrets": [SecretStr(TOKEN_SECRET)],
        "order_id_secret": SecretStr(TOKEN_SECRET),
        **changes,
    }
    return Settings(**fields)


def operations(spec: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each operation of the document by ``"METHOD /path"``."""
    return {
        f"{method.upper()} {path}": operation
        for path, ops in spec["paths"].items()
        for method, operation in ops.items()
    }


@pytest.fixture(autouse=True)
def no_retired_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("API_KEYS", "CUSTOMER_TOKEN_SECRET"):
        monkeypatch.delenv(name, raising=False)


def test_every_route_of_the_app_has_an_access_decision() -> None:
    for settings in (Settings(auth_mode="dev"), secured_settings()):
        assert route_keys(create_app(settings)) == set(ACCESS)


def test_dev_mode_declares_no_scheme_no_requirement_and_no_401_or_403() -> None:
    spec = create_app(Settings(auth_mode="dev")).openapi()
    assert "securitySchemes" not in spec.get("components", {})
    documented = operations(spec)
    assert set(documented) == DOCUMENTED
    for call, operation in documented.items():
        assert "security" not in operation, call
        assert not {"401", "403"} & set(operation["responses"]), call
    assert "security" not in spec  # nor a global requirement


@pytest.mark.parametrize(
    "settings",
    [
        pytest.param(secured_settings(), id="both credentials"),
        pytest.param(secured_settings(customer_token_secrets=[]), id="operator keys only"),
        pytest.param(secured_settings(operator_api_keys=[]), id="customer tokens only"),
    ],
)
def test_required_mode_declares_each_routes_requirement(settings: Settings) -> None:
    spec = create_app(settings).openapi()
    schemes = spec["components"]["securitySchemes"]
    assert set(schemes) == {"OperatorKey", "CustomerToken"}
    assert {k: v for k, v in schemes["OperatorKey"].items() if k != "description"} == {
        "type": "apiKey",
        "in": "header",
        "name": "X-API-Key",
    }
    assert {k: v for k, v in schemes["CustomerToken"].items() if k != "description"} == {
        "type": "http",
        "scheme": "bearer",
        "bearerFormat": "JWT",
    }
    assert "security" not in spec  # no global requirement: each route says its own

    documented = operations(spec)
    assert set(documented) == DOCUMENTED
    declared = {call: operation.get("security") for call, operation in documented.items()}
    assert declared == {call: SECURITY[ACCESS[call]] for call in documented}
    for call, operation in documented.items():
        responses = set(operation["responses"])
        if ACCESS[call] == Access.PUBLIC:
            assert not {"401", "403"} & responses, call
        elif ACCESS[call] == Access.EITHER and "{" in call:
            # Anyone may call it, and another customer's order is a 404 exactly as an unknown
            # one (a 403 would tell that it exists): it has no 403 to document.
            assert "401" in responses, call
            assert "403" not in responses, call
        else:
            assert {"401", "403"} <= responses, call


@pytest.mark.parametrize(
    "configured",
    [{}, {"operator_api_keys": ""}, {"customer_token_secrets": " , "}],
    ids=["nothing", "empty keys", "only commas"],
)
def test_the_api_refuses_to_start_without_credentials(
    monkeypatch: pytest.MonkeyPatch, configured: dict[str, str]
) -> None:
    for field, value in configured.items():
        monkeypatch.setenv(field.upper(), value)
    with pytest.raises(AuthNotConfiguredError) as raised:
        create_app(Settings())
    message = str(raised.value)
    assert message.startswith("the API refuses to start: no credentials are configured")
    for hint in ("OPERATOR_API_KEYS", "CUSTOMER_TOKEN_SECRETS", "AUTH_MODE=dev"):
        assert hint in message
    assert "no longer read" not in message


def test_the_refusal_names_a_retired_setting_still_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("API_KEYS", "an-old-api-key-0123456789")
    with pytest.raises(AuthNotConfiguredError) as raised:
        create_app(Settings())
    message = str(raised.value)
    assert "API_KEYS is no longer read" in message
    assert "an-old-api-key-0123456789" not in message


@pytest.mark.parametrize(
    "settings",
    [
        pytest.param({"auth_mode": "dev"}, id="dev"),
        pytest.param({"operator_api_keys": [SecretStr(OPERATOR_KEY)]}, id="operator keys"),
        pytest.param({"customer_token_secrets": [SecretStr(TOKEN_SECRET)]}, id="token secrets"),
    ],
)
def test_the_api_starts_in_dev_mode_or_with_either_credential(settings: dict[str, Any]) -> None:
    if settings.get("auth_mode") != "dev":
        with pytest.raises(AuthNotConfiguredError, match="ORDER_ID_SECRET"):
            create_app(Settings(**settings))
        settings = {**settings, "order_id_secret": SecretStr(TOKEN_SECRET)}
    assert isinstance(create_app(Settings(**settings)), FastAPI)
