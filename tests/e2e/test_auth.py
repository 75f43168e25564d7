"""Who may do what, end to end: an API with auth required (``secured``: operator keys and
customer tokens) over the same Temporal dev server, worker and database as the open API of
the other tests (``stack``, ``AUTH_MODE=dev``).

Every route of the app is in the access matrix (``tests/api/test_openapi_security.ACCESS``);
each refused call is checked to change nothing (rows of every table, idempotency keys,
workflows on the server, and the saga's signals), each allowed one to work through the saga.
"""

import asyncio
import base64
import json
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from api.app import create_app
from api.auth.tokens import TOKEN_AUDIENCE, issue_customer_token
from sagas.temporal import TemporalConnectError, connect_temporal
from tests.api.test_openapi_security import (
    ACCESS,
    DOCUMENTED,
    SECURITY,
    Access,
    route_keys,
)
from tests.e2e.conftest import (
    CUSTOMER_TOKEN_SECRET,
    OLD_CUSTOMER_TOKEN_SECRET,
    OLD_OPERATOR_KEY,
    OPERATOR_KEY,
    SecuredApi,
    Stack,
)
from tests.e2e.test_api_saga import ORDER, WAIT, eventually
from tests.e2e.test_hostile_input import settled_snapshot, snapshot
from tests.saga_harness import db_statuses

PROTECTED = sorted(call for call, access in ACCESS.items() if access != Access.PUBLIC)
PUBLIC = sorted(call for call, access in ACCESS.items() if access == Access.PUBLIC)
UNKNOWN_SECRET = "a-customer-token-secret-this-api-does-not-have"

Headers = Mapping[str, str] | Mapping[bytes, bytes]


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


def unique_city(name: str) -> str:
    return f"{name} {uuid.uuid4().hex[:8]}"


def with_unknown_id(path: str) -> str:
    """``path`` with a random id in its one ``{...}`` parameter."""
    before, _, rest = path.partition("{")
    return before + str(uuid.uuid4()) + rest.partition("}")[2]


async def place(secured: SecuredApi, customer_id: str, **changes: Any) -> dict[str, Any]:
    """The customer places an order with their own token, waiting (``Prefer: wait``) until
    its saga has written it: it then waits for their payment."""
    response = await secured.http.post(
        "/orders",
        json=order_of(customer_id, **changes),
        headers={**secured.customer(customer_id), **WAIT},
    )
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    assert body["customer_id"] == customer_id
    assert (body["phase"], body["payment"]["status"]) == ("AWAITING_PAYMENT", "PENDING")
    assert "saga" not in body  # an order's view never carries the saga's own state
    return body


async def add_dealer(secured: SecuredApi, city: str, key: str = OPERATOR_KEY) -> dict[str, Any]:
    response = await secured.http.post(
        "/dealers", json=dealer_body(city), headers=secured.operator(key)
    )
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


def in_transit(order: dict[str, Any]) -> bool:
    """A dealer carries the order, and its saga waits for the delivery report."""
    return (
        order["phase"] == "IN_TRANSIT" and (order["delivery"] or {}).get("status") == "IN_TRANSIT"
    )


@dataclass
class World:
    """Orders the refused calls aim at: alice's awaits her payment, carol's is in transit."""

    alice: str
    bob: str
    carol: str
    alice_order: dict[str, Any]
    bob_order: dict[str, Any]
    carol_order: dict[str, Any]

    def owner(self, call: str) -> str:
        """The customer whose order, payment or delivery ``call`` names."""
        return self.carol if "{delivery_id}" in call else self.alice

    def request(self, call: str, customer: str | None = None) -> tuple[str, str, Any]:
        """Method, URL and JSON body of ``call`` on the world's order (a valid request)."""
        method, path = call.split(" ", 1)
        path = (
            path.replace("{order_id}", self.alice_order["order_id"])
            .replace("{payment_id}", self.alice_order["payment"]["payment_id"])
            .replace("{delivery_id}", self.carol_order["delivery"]["delivery_id"])
            .replace("{dead_letter_id}", str(uuid.uuid4()))  # refused before it is looked up
        )
        assert "{" not in path, f"{call}: a new path parameter needs an id of the world's"
        body: dict[str, Any] | None = None
        if call in ("POST /orders", "POST /orders/create_order"):
            body = order_of(customer or self.alice)
        elif call == "POST /dealers":
            body = dealer_body(unique_city("Refused"))
        return method, path, body


@pytest.fixture(scope="module")
async def world(stack: Stack, secured: SecuredApi) -> World:
    alice, bob, carol = new_customer("alice"), new_customer("bob"), new_customer("carol")
    city = unique_city("Carol City")
    await add_dealer(secured, city)
    alice_order, bob_order, carol_order = await asyncio.gather(
        place(secured, alice), place(secured, bob), place(secured, carol, city=city)
    )
    confirmed = await secured.http.post(
        f"/payments/{carol_order['payment']['payment_id']}/confirm",
        headers=secured.customer(carol),
    )
    assert confirmed.status_code == 202, confirmed.text
    carol_order = await eventually(stack, carol_order["order_id"], in_transit)
    return World(alice, bob, carol, alice_order, bob_order, carol_order)


async def observed(stack: Stack, secured: SecuredApi, world: World) -> dict[str, Any]:
    """What a refused call must not change: rows of every table (idempotency keys and payment
    decisions included), decisions taken, workflows, and the world's orders as their sagas
    and the database see them."""
    state: dict[str, Any] = dict(await snapshot(stack))
    saga = await secured.http.get(
        f"/orders/{world.alice_order['order_id']}/saga", headers=secured.operator()
    )
    assert saga.status_code == 200, saga.text
    state["alice's saga"] = {k: saga.json()[k] for k in ("phase", "payment_status", "signals")}
    for name, order in (("alice", world.alice_order), ("carol", world.carol_order)):
        state[name] = await asyncio.to_thread(db_statuses, stack.engine, order["order_id"])
        view = await secured.http.get(f"/orders/{order['order_id']}", headers=secured.operator())
        state[f"{name}'s order"] = {k: view.json()[k] for k in ("phase", "status", "payment")}
    return state


async def settled(stack: Stack, secured: SecuredApi, world: World) -> dict[str, Any]:
    await settled_snapshot(stack)
    before = await observed(stack, secured, world)
    assert before["alice's saga"] == {
        "phase": "AWAITING_PAYMENT",
        "payment_status": "PENDING",
        "signals": [],
    }
    assert before["alice's order"]["payment"]["decision"] is None
    assert before["carol"]["delivery"] == "IN_TRANSIT"
    return before


async def call_route(
    secured: SecuredApi, world: World, call: str, headers: Headers, customer: str | None = None
) -> httpx.Response:
    method, url, body = world.request(call, customer)
    return await secured.http.request(method, url, json=body, headers=headers)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def alg_none_token(customer_id: str) -> str:
    header = b64(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    exp = int(time.time()) + 600
    claims = b64(json.dumps({"sub": customer_id, "aud": TOKEN_AUDIENCE, "exp": exp}).encode())
    return f"{header}.{claims}."


def invalid_credentials(customer_id: str) -> dict[str, Headers]:
    """Every way a request can lack a valid credential: each one is a 401."""
    token = SecuredApi.customer(customer_id)["Authorization"].removeprefix("Bearer ")
    expired_at = datetime.now(UTC) - timedelta(hours=2)
    return {
        "none": {},
        "wrong key": SecuredApi.operator("wrong"),
        "key with a character more": SecuredApi.operator(OPERATOR_KEY + "x"),
        "key with a character less": SecuredApi.operator(OPERATOR_KEY[:-1]),
        "key in upper case": SecuredApi.operator(OPERATOR_KEY.upper()),
        "empty key": SecuredApi.operator(""),
        "key not ascii": {b"X-API-Key": "kl\u00e9-0123456789abcdef".encode()},
        "the key as a bearer token": {"Authorization": f"Bearer {OPERATOR_KEY}"},
        "a token as the key": SecuredApi.operator(token),
        "expired token": SecuredApi.customer(customer_id, ttl=timedelta(hours=1), now=expired_at),
        "token of an unknown secret": SecuredApi.customer(customer_id, secret=UNKNOWN_SECRET),
        "token with alg none": {"Authorization": f"Bearer {alg_none_token(customer_id)}"},
        "token tampered": {"Authorization": f"Bearer {token[:-8]}AAAAAAAA"},
        "not bearer": {"Authorization": f"Basic {token}"},
        "bearer without a token": {"Authorization": "Bearer"},
        "bearer not a jwt": {"Authorization": f"Bearer {customer_id}"},
        "token not utf-8": {b"Authorization": b"Bearer \xff\xfe." + token.encode()[-43:]},
        "both key and token": {**SecuredApi.operator(), **SecuredApi.customer(customer_id)},
        "both, old key and old secret": {
            **SecuredApi.operator(OLD_OPERATOR_KEY),
            **SecuredApi.customer(customer_id, secret=OLD_CUSTOMER_TOKEN_SECRET),
        },
    }


# --- every route is decided ------------------------------------------------------------------


def test_every_route_of_the_secured_app_is_in_the_access_matrix(secured: SecuredApi) -> None:
    assert route_keys(create_app(secured.settings)) == set(ACCESS)


# --- 401: no valid credential ----------------------------------------------------------------


@pytest.mark.parametrize("call", PROTECTED)
async def test_a_call_without_a_valid_credential_is_401_and_changes_nothing(
    stack: Stack, secured: SecuredApi, world: World, call: str
) -> None:
    before = await settled(stack, secured, world)
    # The credentials of the route's own customer would be valid, but not like this.
    for case, headers in invalid_credentials(world.owner(call)).items():
        response = await call_route(secured, world, call, headers, world.owner(call))
        assert response.status_code == 401, (case, response.text)
        assert response.headers["WWW-Authenticate"].startswith("Bearer"), case
        assert response.json()["detail"], case
    assert await observed(stack, secured, world) == before


@pytest.mark.parametrize("path", ["/orders", "/dealers"])
async def test_a_call_without_a_credential_is_401_whatever_its_body(
    stack: Stack, secured: SecuredApi, world: World, path: str
) -> None:
    # The caller is decided before the body is read: malformed JSON, NaN or an invalid body
    # from nobody is a 401, not a 422 describing the body.
    before = await settled(stack, secured, world)
    for body in (b"{not json", b'{"a": NaN}', b"{}", b"[" * 10_000):
        response = await secured.http.post(
            path, content=body, headers={"Content-Type": "application/json"}
        )
        assert response.status_code == 401, (body[:20], response.text)
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert await observed(stack, secured, world) == before


# --- 403: a valid credential that may not -----------------------------------------------------


def wrong_roles() -> list[Any]:
    cases = []
    for call in PROTECTED:
        if ACCESS[call] == Access.CUSTOMER:
            cases.append(pytest.param(call, "operator", id=f"{call} as an operator"))
        elif ACCESS[call] == Access.OPERATOR:
            cases.append(pytest.param(call, "customer", id=f"{call} as its customer"))
    return cases


def test_every_customer_only_and_operator_only_route_has_a_wrong_role_case() -> None:
    decided = {case.values[0] for case in wrong_roles()}
    assert decided == {c for c in PROTECTED if ACCESS[c] in (Access.CUSTOMER, Access.OPERATOR)}


@pytest.mark.parametrize(("call", "role"), wrong_roles())
async def test_a_credential_of_the_wrong_role_is_403_and_changes_nothing(
    stack: Stack, secured: SecuredApi, world: World, call: str, role: str
) -> None:
    before = await settled(stack, secured, world)
    owner = world.owner(call)
    # The customer is the one whose order, payment or delivery it is; the operator's keys are
    # both the current one and the one being rotated out.
    if role == "customer":
        credentials = [
            secured.customer(owner),
            secured.customer(owner, secret=OLD_CUSTOMER_TOKEN_SECRET),
        ]
    else:
        credentials = [secured.operator(), secured.operator(OLD_OPERATOR_KEY)]
    for headers in credentials:
        response = await call_route(secured, world, call, headers, owner)
        assert response.status_code == 403, response.text
        assert response.json()["detail"]
        # The role is decided before anything is looked up: an unknown id is no 404 to it.
        method, path = call.split(" ", 1)
        if "{" in path:
            unknown = await secured.http.request(method, with_unknown_id(path), headers=headers)
            assert unknown.status_code == 403, unknown.text
    assert await observed(stack, secured, world) == before


async def test_another_customers_order_is_404_word_for_word_as_an_unknown_one(
    stack: Stack, secured: SecuredApi, world: World
) -> None:
    """Bob may not read, cancel or pay alice's order, and cannot even tell it exists: the
    answer is the one an unknown id gets (a 403 would say that alice used that key)."""
    before = await settled(stack, secured, world)
    order_id = world.alice_order["order_id"]
    payment_id = world.alice_order["payment"]["payment_id"]
    bob = secured.customer(world.bob)
    for method, url, unknown_id in (
        ("GET", "/orders/{}", order_id),
        ("POST", "/orders/{}/cancel", order_id),
        ("POST", "/payments/{}/confirm", payment_id),
        ("POST", "/payments/{}/cancel", payment_id),
    ):
        response = await secured.http.request(method, url.format(unknown_id), headers=bob)
        unknown = str(uuid.uuid4())
        nothing = await secured.http.request(method, url.format(unknown), headers=bob)
        assert response.status_code == nothing.status_code == 404, (url, response.text)
        assert response.headers.keys() == nothing.headers.keys(), url
        assert response.json() == {
            "detail": nothing.json()["detail"].replace(unknown, unknown_id)
        }, url
    assert await observed(stack, secured, world) == before
    # Nothing reached alice's saga: her payment is still hers to decide.
    saga = await secured.http.get(f"/orders/{order_id}/saga", headers=secured.operator())
    assert (saga.json()["payment_status"], saga.json()["signals"]) == ("PENDING", [])
    assert db_statuses(stack.engine, order_id)["payment"] == "PENDING"


async def test_an_order_in_another_customers_name_is_403_and_records_nothing(
    stack: Stack, secured: SecuredApi, world: World
) -> None:
    before = await settled(stack, secured, world)
    for path in ("/orders", "/orders/create_order"):
        response = await secured.http.post(
            path,
            json=order_of(world.alice),
            headers={**secured.customer(world.bob), "Idempotency-Key": f"stolen-{path}"},
        )
        assert response.status_code == 403, response.text
    assert await observed(stack, secured, world) == before  # no idempotency key kept either


async def test_a_customer_lists_only_their_own_orders(
    stack: Stack, secured: SecuredApi, world: World
) -> None:
    # Other customers' orders, newer than alice's: the first page would show them if unscoped.
    others = [new_customer("other") for _ in range(5)]
    await asyncio.gather(*(place(secured, other) for other in others))
    alice = secured.customer(world.alice)
    own = await secured.http.get("/orders", params={"limit": 100}, headers=alice)
    assert own.status_code == 200, own.text
    page = own.json()
    assert [o["order_id"] for o in page["items"]] == [world.alice_order["order_id"]]
    assert page["total"] == 1
    for params in ({"customer_id": world.alice}, {"status": "PENDING"}, {"limit": 1}):
        same = await secured.http.get("/orders", params=params, headers=alice)
        assert same.status_code == 200, (params, same.text)
        assert {o["customer_id"] for o in same.json()["items"]} == {world.alice}, params
        assert same.json()["total"] == 1, params
    for someone_else in (world.bob, others[0], ""):
        refused = await secured.http.get(
            "/orders", params={"customer_id": someone_else}, headers=alice
        )
        assert refused.status_code == 403, (someone_else, refused.text)

    # The operator sees everyone's, and may filter by customer.
    everyone = await secured.http.get("/orders", params={"limit": 100}, headers=secured.operator())
    assert everyone.status_code == 200, everyone.text
    customers = {o["customer_id"] for o in everyone.json()["items"]}
    assert {world.alice, world.bob, *others} <= customers
    assert everyone.json()["total"] >= 8
    bobs = await secured.http.get(
        "/orders", params={"customer_id": world.bob}, headers=secured.operator()
    )
    assert [o["order_id"] for o in bobs.json()["items"]] == [world.bob_order["order_id"]]


async def test_only_an_operator_sees_the_saga_of_an_order(
    secured: SecuredApi, world: World
) -> None:
    url = f"/orders/{world.alice_order['order_id']}"
    as_customer = await secured.http.get(url, headers=secured.customer(world.alice))
    assert as_customer.status_code == 200, as_customer.text
    assert "saga" not in as_customer.json()
    assert as_customer.json()["phase"] == "AWAITING_PAYMENT"
    assert as_customer.json()["payment"]["status"] == "PENDING"
    # The order's view is the same for both (read from the database); the saga's own state
    # (steps, compensations, signals) is the operator's alone.
    as_operator = await secured.http.get(url, headers=secured.operator())
    assert as_operator.status_code == 200, as_operator.text
    assert as_operator.json() == as_customer.json()
    saga = await secured.http.get(f"{url}/saga", headers=secured.operator())
    assert saga.status_code == 200, saga.text
    assert (saga.json()["phase"], saga.json()["payment_status"]) == ("AWAITING_PAYMENT", "PENDING")
    assert saga.json()["order_id"] == world.alice_order["order_id"]
    assert [s["name"] for s in saga.json()["steps"]] == ["create_order", "create_payment"]
    refused = await secured.http.get(f"{url}/saga", headers=secured.customer(world.alice))
    assert refused.status_code == 403, refused.text


# --- allowed callers -------------------------------------------------------------------------


def unknown_id_cases() -> list[Any]:
    cases: list[Any] = []
    for call in PROTECTED:
        if "{" not in call:
            continue
        roles = {
            Access.OPERATOR: ["operator"],
            Access.CUSTOMER: ["customer"],
            Access.EITHER: ["operator", "customer"],
        }[ACCESS[call]]
        cases.extend(pytest.param(call, role, id=f"{call} as {role}") for role in roles)
    return cases


@pytest.mark.parametrize(("call", "role"), unknown_id_cases())
async def test_an_unknown_id_is_404_for_an_allowed_caller(
    secured: SecuredApi, call: str, role: str
) -> None:
    method, path = call.split(" ", 1)
    url = with_unknown_id(path)
    headers = secured.operator() if role == "operator" else secured.customer(new_customer("c"))
    response = await secured.http.request(method, url, headers=headers)
    assert response.status_code == 404, response.text


async def test_both_operator_keys_and_both_token_secrets_are_accepted(
    secured: SecuredApi, world: World
) -> None:
    # Rotation: the old key and tokens of the old secret work until they are removed.
    order_url = f"/orders/{world.alice_order['order_id']}"
    for key in (OPERATOR_KEY, OLD_OPERATOR_KEY):
        for url in ("/dealers", f"{order_url}/saga"):
            response = await secured.http.get(url, headers=secured.operator(key))
            assert response.status_code == 200, (key, url, response.text)
    await add_dealer(secured, unique_city("Rotation"), key=OLD_OPERATOR_KEY)
    for secret in (CUSTOMER_TOKEN_SECRET, OLD_CUSTOMER_TOKEN_SECRET):
        headers = secured.customer(world.alice, secret=secret)
        response = await secured.http.get(order_url, headers=headers)
        assert response.status_code == 200, response.text
        listed = await secured.http.get("/orders", headers=headers)
        assert listed.json()["total"] == 1


async def test_a_token_just_past_its_expiry_is_accepted_within_the_leeway(
    secured: SecuredApi, world: World
) -> None:
    issued = datetime.now(UTC) - timedelta(minutes=10, seconds=10)
    headers = secured.customer(world.alice, ttl=timedelta(minutes=10), now=issued)
    response = await secured.http.get(f"/orders/{world.alice_order['order_id']}", headers=headers)
    assert response.status_code == 200, response.text


async def test_a_customer_id_that_is_not_ascii_places_and_reads_its_order(
    secured: SecuredApi,
) -> None:
    customer = f"مشتری.{uuid.uuid4().hex[:6]}"
    order = await place(secured, customer)
    token = issue_customer_token(CUSTOMER_TOKEN_SECRET, customer, timedelta(minutes=5))
    read = await secured.http.get(
        f"/orders/{order['order_id']}", headers={"Authorization": f"Bearer {token}"}
    )
    assert read.status_code == 200, read.text
    assert read.json()["customer_id"] == customer


async def test_the_right_credentials_take_an_order_to_delivered(
    stack: Stack, secured: SecuredApi
) -> None:
    dave = new_customer("dave")
    city = unique_city("Auth City")
    await add_dealer(secured, city)  # the operator adds the dealer first
    order = await place(secured, dave, city=city)
    confirm = await secured.http.post(
        f"/payments/{order['payment']['payment_id']}/confirm", headers=secured.customer(dave)
    )
    assert confirm.status_code == 202, confirm.text
    body = await eventually(
        stack,
        order["order_id"],
        in_transit,
    )
    # The dealer's report is an operator's call.
    delivered = await secured.http.post(
        f"/deliveries/{body['delivery']['delivery_id']}/delivered", headers=secured.operator()
    )
    assert delivered.status_code == 202, delivered.text
    await eventually(stack, order["order_id"], lambda o: o["status"] == "DELIVERED")
    assert db_statuses(stack.engine, order["order_id"])["payment"] == "COMPLETED"
    mine = await secured.http.get(f"/orders/{order['order_id']}", headers=secured.customer(dave))
    assert (mine.json()["status"], mine.json()["payment"]["status"]) == ("DELIVERED", "COMPLETED")


async def test_an_operator_cancels_a_customers_order_before_the_pivot(
    stack: Stack, secured: SecuredApi
) -> None:
    order = await place(secured, new_customer("erin"))
    cancel = await secured.http.post(
        f"/orders/{order['order_id']}/cancel", headers=secured.operator()
    )
    assert cancel.status_code == 202, cancel.text
    body = await eventually(stack, order["order_id"], lambda o: o["phase"] == "CANCELLED")
    assert (body["status"], body["payment"]["status"]) == ("CANCELLED", "CANCELLED")


async def test_a_customer_cancels_their_own_order_or_payment(
    stack: Stack, secured: SecuredApi
) -> None:
    frank = new_customer("frank")
    by_order, by_payment = await asyncio.gather(place(secured, frank), place(secured, frank))
    responses = await asyncio.gather(
        secured.http.post(
            f"/orders/{by_order['order_id']}/cancel", headers=secured.customer(frank)
        ),
        secured.http.post(
            f"/payments/{by_payment['payment']['payment_id']}/cancel",
            headers=secured.customer(frank),
        ),
    )
    for response in responses:
        assert response.status_code == 202, response.text
    for order in (by_order, by_payment):
        body = await eventually(stack, order["order_id"], lambda o: o["phase"] == "CANCELLED")
        assert (body["status"], body["payment"]["status"]) == ("CANCELLED", "CANCELLED")


# --- open routes and the documents -----------------------------------------------------------


@pytest.mark.parametrize("call", PUBLIC)
async def test_health_checks_and_documents_are_open(secured: SecuredApi, call: str) -> None:
    method, path = call.split(" ", 1)
    response = await secured.http.request(method, path)
    assert response.status_code == 200, response.text


async def test_the_served_documents_declare_each_routes_requirement(
    stack: Stack, secured: SecuredApi
) -> None:
    spec = (await secured.http.get("/openapi.json")).json()
    assert set(spec["components"]["securitySchemes"]) == {"OperatorKey", "CustomerToken"}
    declared = {
        f"{method.upper()} {path}": operation.get("security")
        for path, ops in spec["paths"].items()
        for method, operation in ops.items()
    }
    assert declared == {call: SECURITY[ACCESS[call]] for call in DOCUMENTED}

    # The open API (AUTH_MODE=dev) asks for nothing, so it declares nothing.
    open_spec = (await stack.http.get("/openapi.json")).json()
    assert "securitySchemes" not in open_spec.get("components", {})
    for path, ops in open_spec["paths"].items():
        for method, operation in ops.items():
            assert "security" not in operation, (method, path)
            assert not {"401", "403"} & set(operation["responses"]), (method, path)


async def test_dev_mode_needs_no_credential_on_any_route(
    stack: Stack, secured: SecuredApi, world: World
) -> None:
    before = await settled(stack, secured, world)
    for call in PROTECTED:
        method, path = call.split(" ", 1)
        body: dict[str, Any] | None = None
        if method == "GET":  # reads of the world's order: the operator's and the customer's
            url = path.replace("{order_id}", world.alice_order["order_id"])
            expected = 200
        elif "{" in path:  # writes on unknown ids: past auth, nothing to change
            url = with_unknown_id(path)
            expected = 404
        else:  # creations with an invalid body: past auth, nothing created
            url, expected, body = path, 422, {}
        response = await stack.http.request(method, url, json=body)
        assert response.status_code == expected, (call, response.text)
    assert await observed(stack, secured, world) == before


# --- Temporal connection security ------------------------------------------------------------


@pytest.mark.parametrize(
    "update", [{"temporal_tls": True}, {"temporal_api_key": SecretStr("not-a-real-key")}], ids=str
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
