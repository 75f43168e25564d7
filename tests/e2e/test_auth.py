"""Who may do what, end to end: an API with API keys and customer tokens on (``secured``),
over the same Temporal dev server, worker and database as the open API of the other tests.

Every refused call is checked to change nothing (rows of every table, workflows on the
server); every allowed one to work all the way through the saga.
"""

import asyncio
import uuid
from typing import Any

import httpx
import pytest
from fastapi.routing import APIRoute

from api.app import create_app
from api.auth import issue_customer_token
from api.routes import dealers, deliveries, health, orders, payments
from settings import TemporalConnectError, connect_temporal
from tests.e2e.conftest import API_KEY, CUSTOMER_TOKEN_SECRET, OLD_API_KEY, SecuredApi, Stack
from tests.e2e.test_api_saga import ORDER, eventually
from tests.e2e.test_hostile_input import settled_snapshot, snapshot
from tests.saga_harness import db_statuses


def new_customer(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}"


def order_of(customer_id: str, **changes: Any) -> dict[str, Any]:
    return {**ORDER, "customer_id": customer_id, **changes}


def dealer_body(city: str) -> dict[str, Any]:
    return {
        "name": f"Dealer of {city}",
        "phone": f"+1 {uuid.uuid4().int % 10**9}",
        "province": "Tehran",
        "city": city,
        "capacity": 1,
    }


async def place(secured: SecuredApi, customer_id: str, **changes: Any) -> dict[str, Any]:
    response = await secured.http.post(
        "/orders", json=order_of(customer_id, **changes), headers=secured.customer(customer_id)
    )
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


def post_calls() -> list[Any]:
    """Every POST route the app serves (the alias too), its path filled in, with a valid body."""
    calls = []
    for module in (orders, payments, deliveries, dealers, health):
        for route in module.router.routes:
            if isinstance(route, APIRoute) and "POST" in (route.methods or ()):
                path = route.path
                for name in route.param_convertors:
                    path = path.replace(f"{{{name}}}", str(uuid.uuid4()))
                body: dict[str, Any] | None = None
                if path.startswith("/orders") and not path.endswith("/cancel"):
                    body = order_of("someone")
                elif path == "/dealers":
                    body = dealer_body("Keyless City")
                calls.append(pytest.param(path, body, id=route.path))
    return calls


POST_CALLS = post_calls()


def test_every_mutating_route_is_covered() -> None:
    assert sorted(call.values[0].split("/")[1] for call in POST_CALLS) == [
        "dealers",
        "deliveries",
        "orders",
        "orders",
        "orders",
        "payments",
        "payments",
    ]


# --- API keys --------------------------------------------------------------------------------


@pytest.mark.parametrize(("path", "body"), POST_CALLS)
async def test_a_mutating_call_without_an_api_key_is_401_and_changes_nothing(
    stack: Stack, secured: SecuredApi, path: str, body: dict[str, Any] | None
) -> None:
    before = await settled_snapshot(stack)
    # A valid customer token, but no API key: the key is what is missing.
    headers = secured.customer("someone", key=None)
    response = await secured.http.post(path, json=body, headers=headers)
    assert response.status_code == 401, response.text
    assert response.headers["WWW-Authenticate"] == 'APIKey header="X-API-Key"'
    assert "X-API-Key" in response.json()["detail"]
    assert await snapshot(stack) == before


@pytest.mark.parametrize(("path", "body"), POST_CALLS)
async def test_a_mutating_call_with_a_wrong_api_key_is_403_and_changes_nothing(
    stack: Stack, secured: SecuredApi, path: str, body: dict[str, Any] | None
) -> None:
    before = await settled_snapshot(stack)
    for wrong in ("wrong", API_KEY + "x", API_KEY[:-1], API_KEY.upper()):
        headers = secured.customer("someone", key=wrong)
        response = await secured.http.post(path, json=body, headers=headers)
        assert response.status_code == 403, (wrong, response.text)
    # Bytes that are not ASCII are just another wrong key, not a 500.
    raw = {b"X-API-Key": "kl\u00e9".encode()}
    response = await secured.http.post(path, json=body, headers=raw)
    assert response.status_code == 403
    assert await snapshot(stack) == before


async def test_reads_and_health_checks_need_no_credentials(secured: SecuredApi) -> None:
    order = await place(secured, new_customer("reader"))
    for path in (
        "/orders",
        f"/orders/{order['order_id']}",
        "/dealers",
        "/healthz",
        "/readyz",
        "/openapi.json",
        "/docs",
    ):
        response = await secured.http.get(path)
        assert response.status_code == 200, (path, response.text)


async def test_either_of_two_configured_keys_is_accepted(secured: SecuredApi) -> None:
    # Rotation: the old key keeps working until it is removed from API_KEYS.
    for key in (API_KEY, OLD_API_KEY):
        added = await secured.http.post(
            "/dealers", json=dealer_body(f"Rotation {key}"), headers=secured.key(key)
        )
        assert added.status_code == 201, added.text


def security_of(spec: dict[str, Any]) -> dict[str, Any]:
    """Each operation's security requirements (absent: none)."""
    return {
        f"{method.upper()} {path}": op.get("security")
        for path, ops in spec["paths"].items()
        for method, op in ops.items()
        if op.get("security")
    }


async def test_the_served_openapi_document_declares_the_schemes_that_are_on(
    stack: Stack, secured: SecuredApi
) -> None:
    spec = (await secured.http.get("/openapi.json")).json()
    schemes = spec["components"]["securitySchemes"]
    assert schemes["ApiKey"] | {"description": ""} == {
        "type": "apiKey",
        "in": "header",
        "name": "X-API-Key",
        "description": "",
    }
    assert schemes["CustomerToken"]["type"] == "http"
    assert schemes["CustomerToken"]["scheme"] == "bearer"
    both: list[dict[str, list[str]]] = [{"ApiKey": [], "CustomerToken": []}]  # AND
    assert security_of(spec) == {
        "POST /orders": both,
        "POST /orders/{order_id}/cancel": both,
        "POST /payments/{payment_id}/confirm": both,
        "POST /payments/{payment_id}/cancel": both,
        "POST /deliveries/{delivery_id}/delivered": [{"ApiKey": []}],
        "POST /dealers": [{"ApiKey": []}],
    }
    for path, ops in spec["paths"].items():
        if "post" in ops:
            assert {"401", "403"} <= set(ops["post"]["responses"]), path
    docs = await secured.http.get("/docs")
    assert "/openapi.json" in docs.text  # Swagger UI, whose Authorize button reads the schemes

    # The open API (auth off) asks for nothing, so it declares nothing.
    open_spec = (await stack.http.get("/openapi.json")).json()
    assert "securitySchemes" not in open_spec.get("components", {})
    assert security_of(open_spec) == {}


# --- customer tokens -------------------------------------------------------------------------


async def test_placing_an_order_without_a_valid_token_is_401_and_starts_nothing(
    stack: Stack, secured: SecuredApi
) -> None:
    alice = new_customer("alice")
    before = await settled_snapshot(stack)
    good = secured.customer(alice)["Authorization"].removeprefix("Bearer ")
    customer_part, mac = good.rsplit(".", 1)
    bad_authorizations = {
        "missing": None,
        "not bearer": f"Basic {good}",
        "no mac": f"Bearer {alice}",
        "tampered mac": f"Bearer {customer_part}.{'0' * len(mac)}",
        "upper-case mac": f"Bearer {customer_part}.{mac.upper()}",
        "reversed mac": f"Bearer {customer_part}.{mac[::-1]}",
        "another secret": f"Bearer {issue_customer_token('another-secret-0123', alice)}",
        "someone else's mac": f"Bearer {alice}.{secured.customer('bob')['Authorization'][-64:]}",
    }
    for case, authorization in bad_authorizations.items():
        headers = secured.key()
        if authorization is not None:
            headers["Authorization"] = authorization
        response = await secured.http.post("/orders", json=order_of(alice), headers=headers)
        assert response.status_code == 401, (case, response.text)
        assert response.headers["WWW-Authenticate"].startswith("Bearer"), case
    assert await snapshot(stack) == before


async def test_an_order_in_another_customers_name_is_403_and_starts_nothing(
    stack: Stack, secured: SecuredApi
) -> None:
    alice, mallory = new_customer("alice"), new_customer("mallory")
    before = await settled_snapshot(stack)
    for path in ("/orders", "/orders/create_order"):
        response = await secured.http.post(
            path,
            json=order_of(alice),
            headers={**secured.customer(mallory), "Idempotency-Key": "alice-key"},
        )
        assert response.status_code == 403, response.text
    assert await snapshot(stack) == before


async def test_the_right_key_and_tokens_take_an_order_to_delivered(
    stack: Stack, secured: SecuredApi
) -> None:
    alice = new_customer("alice")
    city = f"Auth City {uuid.uuid4().hex[:6]}"
    dealer = await secured.http.post("/dealers", json=dealer_body(city), headers=secured.key())
    assert dealer.status_code == 201, dealer.text
    order = await place(secured, alice, city=city)
    assert order["customer_id"] == alice

    confirm = await secured.http.post(
        f"/payments/{order['payment']['payment_id']}/confirm", headers=secured.customer(alice)
    )
    assert confirm.status_code == 202, confirm.text
    body = await eventually(
        stack, order["order_id"], lambda o: (o["delivery"] or {}).get("status") == "IN_TRANSIT"
    )
    # The dealer's report is an operator action: the API key, no customer token.
    delivered = await secured.http.post(
        f"/deliveries/{body['delivery']['delivery_id']}/delivered", headers=secured.key()
    )
    assert delivered.status_code == 202, delivered.text
    await eventually(stack, order["order_id"], lambda o: o["status"] == "DELIVERED")
    assert db_statuses(stack.engine, order["order_id"])["payment"] == "COMPLETED"


async def test_a_customer_id_that_is_not_ascii_authenticates(
    stack: Stack, secured: SecuredApi
) -> None:
    customer = f"مشتری-{uuid.uuid4().hex[:6]}"  # header bytes are the token's UTF-8
    token = issue_customer_token(CUSTOMER_TOKEN_SECRET, customer).encode()
    headers = {b"Authorization": b"Bearer " + token, b"X-API-Key": API_KEY.encode()}
    placed = await secured.http.post("/orders", json=order_of(customer), headers=headers)
    assert placed.status_code == 201, placed.text
    assert placed.json()["customer_id"] == customer
    # Not UTF-8 at all: an invalid token, not a 500.
    headers[b"Authorization"] = b"Bearer \xff\xfe." + token[-64:]
    refused = await secured.http.post("/orders", json=order_of(customer), headers=headers)
    assert refused.status_code == 401


async def test_another_customer_cannot_decide_a_payment_and_it_stays_pending(
    stack: Stack, secured: SecuredApi
) -> None:
    alice, mallory = new_customer("alice"), new_customer("mallory")
    order = await place(secured, alice)
    payment = f"/payments/{order['payment']['payment_id']}"
    for action in ("confirm", "cancel"):
        # A valid token, and the application's key, but of the wrong customer.
        stolen = await secured.http.post(f"{payment}/{action}", headers=secured.customer(mallory))
        assert stolen.status_code == 403, stolen.text
        assert "another customer" in stolen.json()["detail"]
        # No token at all: 401, before anything is looked up.
        anonymous = await secured.http.post(f"{payment}/{action}", headers=secured.key())
        assert anonymous.status_code == 401
    body = (await stack.http.get(f"/orders/{order['order_id']}")).json()
    assert body["payment"]["status"] == "PENDING"
    assert body["saga"]["phase"] == "AWAITING_PAYMENT"
    assert body["saga"]["signals"] == []  # nothing reached the saga
    assert db_statuses(stack.engine, order["order_id"])["payment"] == "PENDING"

    # The owner's own decision is taken.
    own = await secured.http.post(f"{payment}/cancel", headers=secured.customer(alice))
    assert own.status_code == 202, own.text
    body = await eventually(stack, order["order_id"], lambda o: o["saga"]["phase"] == "CANCELLED")
    assert body["payment"]["status"] == "CANCELLED"


async def test_another_customer_cannot_cancel_an_order(stack: Stack, secured: SecuredApi) -> None:
    alice, mallory = new_customer("alice"), new_customer("mallory")
    order = await place(secured, alice)
    cancel = f"/orders/{order['order_id']}/cancel"
    stolen = await secured.http.post(cancel, headers=secured.customer(mallory))
    assert stolen.status_code == 403, stolen.text
    assert (await secured.http.post(cancel, headers=secured.key())).status_code == 401
    body = (await stack.http.get(f"/orders/{order['order_id']}")).json()
    assert (body["status"], body["saga"]["phase"]) == ("PENDING", "AWAITING_PAYMENT")

    own = await secured.http.post(cancel, headers=secured.customer(alice))
    assert own.status_code == 202, own.text
    body = await eventually(stack, order["order_id"], lambda o: o["saga"]["phase"] == "CANCELLED")
    assert (body["status"], body["payment"]["status"]) == ("CANCELLED", "CANCELLED")


async def test_unknown_ids_are_404_for_a_customer_and_401_without_a_token(
    secured: SecuredApi,
) -> None:
    customer = secured.customer(new_customer("alice"))
    for path in (
        f"/payments/{uuid.uuid4()}/confirm",
        f"/payments/{uuid.uuid4()}/cancel",
        f"/orders/{uuid.uuid4()}/cancel",
    ):
        assert (await secured.http.post(path, headers=customer)).status_code == 404, path
        # Without a token nothing is looked up, so the answer says nothing about existence.
        assert (await secured.http.post(path, headers=secured.key())).status_code == 401, path


async def test_operator_calls_need_the_key_and_no_customer_token(secured: SecuredApi) -> None:
    unknown = f"/deliveries/{uuid.uuid4()}/delivered"
    # Past the key check: the handler's own 404, not a 401 for want of a token.
    assert (await secured.http.post(unknown, headers=secured.key())).status_code == 404
    # A customer token is no substitute for the key.
    customer_only = secured.customer(new_customer("alice"), key=None)
    assert (await secured.http.post(unknown, headers=customer_only)).status_code == 401


# --- Temporal connection security ------------------------------------------------------------


@pytest.mark.parametrize(
    "update", [{"temporal_tls": True}, {"temporal_api_key": "not-a-real-key"}], ids=str
)
async def test_tls_to_the_plain_dev_server_fails_fast_and_says_why(
    stack: Stack, update: dict[str, Any]
) -> None:
    settings = stack.settings.model_copy(update=update)
    assert settings.tls_config()  # an API key alone implies TLS
    async with asyncio.timeout(15):  # a clear failure, never a hang
        with pytest.raises(TemporalConnectError) as raised:
            await connect_temporal(settings)
    message = str(raised.value)
    assert stack.settings.temporal_address in message
    assert "TLS is on" in message


async def test_an_api_with_tls_to_the_plain_dev_server_is_not_ready(stack: Stack) -> None:
    app = create_app(stack.settings.model_copy(update={"temporal_tls": True}))
    async with (
        asyncio.timeout(15),
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api") as http,
    ):
        response = await http.get("/readyz")
    assert response.status_code == 503
    assert response.json()["database"] == "ok"
    assert response.json()["temporal"].startswith("error")
