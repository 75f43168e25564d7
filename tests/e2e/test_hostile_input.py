"""Hostile input over HTTP: every bad request gets a clear 4xx (never a 5xx) and changes nothing.

After each refused call the test counts the rows of every table and the workflows on the
Temporal server, and compares them with the counts taken before it.
"""

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, func
from sqlmodel import col, select

from store.db import session
from store.models import (
    DeadLetterRow,
    DealerRow,
    DeliveryRow,
    IdempotencyKeyRow,
    InboxRow,
    OrderItemRow,
    OrderRow,
    OutboxRow,
    PaymentDecisionRow,
    PaymentRow,
    RefundRow,
)
from tests.e2e.conftest import Stack
from tests.e2e.test_api_saga import ORDER, eventually

TABLES = {
    "orders": OrderRow,
    "order_items": OrderItemRow,
    "payments": PaymentRow,
    "payment_decisions": PaymentDecisionRow,
    "deliveries": DeliveryRow,
    "refunds": RefundRow,
    "dealers": DealerRow,
    "idempotency_keys": IdempotencyKeyRow,
    "outbox": OutboxRow,
    "inbox": InboxRow,
    "dead_letters": DeadLetterRow,
}
MIB = 1024 * 1024


def row_counts(engine: Engine) -> dict[str, int]:
    """Rows in every service table, and the payment decisions taken (a decision changes a row
    opened when its order was accepted, not the count)."""
    with session(engine) as db:
        counts = {
            name: db.exec(select(func.count()).select_from(table)).one()
            for name, table in TABLES.items()
        }
        counts["dead letters replayed"] = db.exec(
            select(func.count())
            .select_from(DeadLetterRow)
            .where(col(DeadLetterRow.replayed_at).is_not(None))
        ).one()
        counts["payment decisions taken"] = db.exec(
            select(func.count())
            .select_from(PaymentDecisionRow)
            .where(col(PaymentDecisionRow.decision).is_not(None))
        ).one()
        return counts


async def snapshot(stack: Stack) -> dict[str, int]:
    """Rows in every table and workflows on the server: what a refused call must not change."""
    counts = await asyncio.to_thread(row_counts, stack.engine)
    counts["workflows"] = (await stack.client.count_workflows()).count
    return counts


async def settled_snapshot(stack: Stack, within: float = 15, quiet: float = 0.3) -> dict[str, int]:
    """A snapshot once sagas left running by earlier tests have stopped changing rows: the
    same for ``quiet`` seconds (longer than a saga takes from one step's rows to the next's,
    as an order accepted with a 202 is still being written)."""
    deadline = time.monotonic() + within
    last, since = await snapshot(stack), time.monotonic()
    while True:
        await asyncio.sleep(0.05)
        now = await snapshot(stack)
        if now != last:
            assert time.monotonic() < deadline, f"rows kept changing: {last} -> {now}"
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet:
            return now


def _not_json(literal: str) -> Any:
    raise AssertionError(f"{literal} in an answer is not JSON")


class Refusals:
    """Sends requests that must be refused and checks each one changed nothing."""

    def __init__(self, stack: Stack, before: dict[str, int]) -> None:
        self.stack = stack
        self.before = before

    async def expect(
        self, expected: int | set[int], method: str, url: str, **kwargs: Any
    ) -> httpx.Response:
        response = await self.stack.http.request(method, url, **kwargs)
        allowed = {expected} if isinstance(expected, int) else expected
        shown = response.text[:300]
        assert response.status_code in allowed, (method, url[:100], response.status_code, shown)
        assert response.headers["content-type"].startswith("application/json"), shown
        if response.status_code >= 400:
            # Strict JSON: NaN or Infinity echoed back would not be JSON at all.
            assert "detail" in json.loads(response.text, parse_constant=_not_json), shown
        after = await snapshot(self.stack)
        assert after == self.before, f"{method} {url[:100]} changed state: {self.before} -> {after}"
        return response


@pytest.fixture(scope="module", autouse=True)
async def _settled(stack: Stack) -> None:
    """Start once sagas of earlier test modules have stopped changing rows."""
    await settled_snapshot(stack)


@pytest.fixture
async def refusals(stack: Stack) -> Refusals:
    # Tests here that are accepted settle before they end (see ``accepted``).
    return Refusals(stack, await snapshot(stack))


async def accepted(stack: Stack, response: httpx.Response) -> dict[str, Any]:
    """An accepted POST /orders (202: its saga is started): the order once its saga has
    written it and waits for the payment decision, and is visible."""
    assert response.status_code == 202, response.text
    assert response.json()["payment_id"]
    body = await eventually(
        stack, response.json()["order_id"], lambda o: o["phase"] == "AWAITING_PAYMENT"
    )
    assert body["payment"]["payment_id"] == response.json()["payment_id"]
    await settled_snapshot(stack)
    return body


def order(**changes: Any) -> dict[str, Any]:
    return {**ORDER, "customer_id": f"hostile-{uuid.uuid4().hex[:8]}", **changes}


def item(**changes: Any) -> dict[str, Any]:
    return {"product_id": "book", "quantity": 1, "unit_price": "1.00", **changes}


# --- size ------------------------------------------------------------------------------


async def test_a_5_mb_body_is_refused_with_413(refusals: Refusals) -> None:
    huge = order(items=[item(product_id="x" * 50) for _ in range(5 * MIB // 60)])
    body = json.dumps(huge).encode()
    assert len(body) > 5 * MIB
    response = await refusals.expect(
        413, "POST", "/orders", content=body, headers={"Content-Type": "application/json"}
    )
    assert "larger than 1048576 bytes" in response.json()["detail"]
    # The connection is still usable after the refusal.
    assert (await refusals.stack.http.get("/healthz")).status_code == 200


async def test_a_chunked_body_over_the_limit_is_refused_with_413(refusals: Refusals) -> None:
    sent = 0

    async def chunks() -> AsyncIterator[bytes]:
        nonlocal sent
        yield b'{"customer_id": "c", "city": "'
        for _ in range(3 * MIB // 65536):
            sent += 65536
            yield b"x" * 65536
        yield b'"}'

    response = await refusals.expect(
        413, "POST", "/orders", content=chunks(), headers={"Content-Type": "application/json"}
    )
    assert "content-length" not in response.request.headers
    assert response.request.headers["transfer-encoding"] == "chunked"


async def test_a_chunked_body_within_the_limit_is_read_whole(stack: Stack) -> None:
    body = json.dumps(order(city="Chunked City")).encode()

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(body), 7):
            yield body[start : start + 7]

    response = await stack.http.post(
        "/orders", content=chunks(), headers={"Content-Type": "application/json"}
    )
    assert (await accepted(stack, response))["city"] == "Chunked City"


async def test_a_body_over_a_configured_limit_is_refused(stack: Stack) -> None:
    from api.app import create_app

    small = create_app(stack.settings.model_copy(update={"max_body_bytes": 100}))
    transport = httpx.ASGITransport(app=small)
    async with httpx.AsyncClient(transport=transport, base_url="http://app") as http:
        # The limit answers before routing, so the app's lifespan need not have run.
        too_big = await http.post("/orders", json=order())
        assert too_big.status_code == 413
        assert "larger than 100 bytes" in too_big.json()["detail"]
        assert (await http.get("/healthz")).status_code == 200


async def test_10000_items_are_refused_the_maximum_is_100(refusals: Refusals) -> None:
    many = order(items=[item() for _ in range(10_000)])
    response = await refusals.expect(422, "POST", "/orders", json=many)
    assert any(e["loc"] == ["body", "items"] for e in response.json()["detail"])
    await refusals.expect(422, "POST", "/orders", json=order(items=[item()] * 101))
    # The answer is small: it lists a few errors and does not echo the 10,000 items back.
    assert len(response.content) < 2000, len(response.content)


async def test_a_422_lists_a_few_errors_and_counts_the_rest(refusals: Refusals) -> None:
    bad = order(items=[item(quantity=0, unit_price="0") for _ in range(50)])
    response = await refusals.expect(422, "POST", "/orders", json=bad)
    body = response.json()
    assert len(body["detail"]) == 5
    assert body["omitted"] == 95
    assert len(response.content) < 2000


# --- text ------------------------------------------------------------------------------


async def test_emoji_and_right_to_left_text_are_stored_exactly(stack: Stack) -> None:
    # Persian (with a zero-width non-joiner between two words) and an emoji.
    city = "تهران 🚚 \u0646\u06cc\u0645\u200c\u0641\u0627\u0635\u0644\u0647"
    product = "کتاب-📚-\u05e9\u05dc\u05d5\u05dd"
    response = await stack.http.post(
        "/orders", json=order(city=city, province="اصفهان", items=[item(product_id=product)])
    )
    placed = await accepted(stack, response)
    body = (await stack.http.get(f"/orders/{placed['order_id']}")).json()
    assert (body["city"], body["province"]) == (city, "اصفهان")
    assert body["items"][0]["product_id"] == product


async def test_names_are_stored_in_one_unicode_spelling(stack: Stack) -> None:
    # "Café" typed with a combining accent is stored as the single character é (NFC).
    response = await stack.http.post("/orders", json=order(city="Cafe\u0301", province="Qom"))
    placed = await accepted(stack, response)
    body = (await stack.http.get(f"/orders/{placed['order_id']}")).json()
    assert body["city"] == "Caf\u00e9"


@pytest.mark.parametrize(
    "changes",
    [
        {"city": "Teh\x00ran"},
        {"province": "\x00"},
        {"customer_id": "c\x00"},
        {"items": [item(product_id="book\x00")]},
        {"city": "Teh\nran"},
        {"city": "Teh\x1bran"},
        {"city": "Teh\x7fran"},
        {"city": "Teh\x85ran"},  # C1 control (next line)
        {"city": "\u202etset"},  # right-to-left override: shows as "test"
        {"city": "Teh\u2066ran\u2069"},  # bidirectional isolates
        {"customer_id": "c\u200f1"},  # right-to-left mark
        {"province": "Teh\u061cran"},  # Arabic letter mark
        {"city": "Teh\u2028ran"},  # line separator
        {"city": "   "},
        {"city": "x" * 101},
        {"customer_id": "c" * 65},
        {"items": [item(product_id="p" * 65)]},
    ],
    ids=repr,
)
async def test_control_characters_and_overlong_text_are_refused(
    refusals: Refusals, changes: dict[str, Any]
) -> None:
    # NUL in particular: PostgreSQL text cannot hold it; it must never reach the database.
    await refusals.expect(422, "POST", "/orders", json=order(**changes))


async def test_a_place_whose_key_outgrows_its_column_is_refused(refusals: Refusals) -> None:
    # 100 characters, but 200 once case-folded ("ß" is "ss"): the dealer's key column holds 100.
    # On PostgreSQL this was a 503 "database is unavailable" with a traceback.
    city = "ß" * 100
    dealer = {"name": "N", "phone": "+1 555 0142", "province": "Tehran", "city": city}
    response = await refusals.expect(422, "POST", "/dealers", json={**dealer, "capacity": 1})
    assert "case-folded" in response.text
    await refusals.expect(422, "POST", "/orders", json=order(city=city))
    await refusals.expect(422, "POST", "/orders", json=order(province="ß" * 51))


async def test_lone_surrogates_are_refused(refusals: Refusals) -> None:
    body = json.dumps(order(city="CITY")).replace("CITY", "\\ud800").encode()
    await refusals.expect(
        422, "POST", "/orders", content=body, headers={"Content-Type": "application/json"}
    )


@pytest.mark.parametrize(
    "url",
    [
        "/orders?customer_id=%ED%A0%80",
        "/orders?customer_id=%FF%FE",
        "/orders?status=%00",
        "/orders?limit=%ED%A0%80",
        "/dealers?city=%C0%AF",
        "/orders/%ED%A0%80",
        "/orders/%FF",
        "/payments/%ED%A0%80/confirm",
        "/deliveries/%00%00/delivered",
    ],
)
async def test_undecodable_bytes_in_urls_never_cause_a_5xx(refusals: Refusals, url: str) -> None:
    method = "POST" if url.endswith(("confirm", "delivered")) else "GET"
    # A filter that decodes to replacement characters simply matches nothing (200).
    await refusals.expect({200, 404, 422}, method, url)


async def test_control_characters_in_filters_and_dealers_are_refused(refusals: Refusals) -> None:
    await refusals.expect(422, "GET", "/orders", params={"customer_id": "c\x00"})
    await refusals.expect(422, "GET", "/dealers", params={"city": "Teh\x00ran"})
    await refusals.expect(422, "GET", "/dealers", params={"province": "\x00"})
    dealer = {"name": "N\x00", "phone": "+1 555", "province": "Tehran", "city": "Tehran"}
    await refusals.expect(422, "POST", "/dealers", json={**dealer, "capacity": 1})
    await refusals.expect(
        422, "POST", "/dealers", json={**dealer, "name": "ok", "city": "\x00", "capacity": 1}
    )


# --- numbers ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad_item",
    [
        item(unit_price="-1.00"),
        item(unit_price=-1),
        item(unit_price="0"),
        item(unit_price="0.00"),
        item(unit_price=0),
        item(unit_price="-0.01"),
        item(unit_price="1.005"),
        item(unit_price=1.005),
        item(unit_price=1e30),
        item(unit_price="1e30"),
        item(unit_price="1" + "0" * 40),
        item(unit_price="10000000000.00"),
        item(unit_price="NaN"),
        item(unit_price="Infinity"),
        item(unit_price="-Infinity"),
        item(unit_price="twelve"),
        item(unit_price=None),
        item(unit_price=[]),
        item(quantity=0),
        item(quantity=-1),
        item(quantity=11),
        item(quantity=10**30),
        item(quantity=-(10**30)),
        item(quantity=1.5),
        item(quantity="lots"),
        item(quantity=True),
        item(quantity=False),
        item(quantity="3"),
        item(quantity="3.0"),
        item(quantity=[3]),
    ],
    ids=repr,
)
async def test_bad_amounts_and_quantities_are_refused(
    refusals: Refusals, bad_item: dict[str, Any]
) -> None:
    await refusals.expect(422, "POST", "/orders", json=order(items=[bad_item]))


async def test_an_integral_number_is_an_integer_quantity(stack: Stack) -> None:
    # JSON Schema counts 2.0 as the integer 2, so the API takes it as 2 (never true or "2").
    placed = await accepted(
        stack, await stack.http.post("/orders", json=order(items=[item(quantity=2.0)]))
    )
    assert placed["items"][0]["quantity"] == 2


@pytest.mark.parametrize("field", ["quantity", "unit_price"])
async def test_numbers_too_long_to_read_are_refused_with_a_json_422(
    refusals: Refusals, field: str
) -> None:
    for literal in (b"9" * 5000, b"1." + b"0" * 5000, b"1e" + b"9" * 4000):
        body = json.dumps(order(items=[item(**{field: "NUMBER"})])).encode()
        body = body.replace(b'"NUMBER"', literal)
        response = await refusals.expect(
            422, "POST", "/orders", content=body, headers={"Content-Type": "application/json"}
        )
        assert len(response.content) < 1000


# Each of these is a few bytes, but int() of it (a range check, or FastAPI echoing it in a 422)
# took seconds to minutes on the event loop, stalling every other request.
HUGE_EXPONENTS = [b"1e200000", b"1e1000000", b"-9.9E+999999", b"1e-1000000", b"0e999999"]


@pytest.mark.parametrize("literal", HUGE_EXPONENTS, ids=lambda raw: raw.decode())
async def test_a_number_with_a_huge_exponent_is_refused_at_once(
    refusals: Refusals, literal: bytes
) -> None:
    headers = {"Content-Type": "application/json"}
    bodies = [
        json.dumps(order(items=[item(quantity="N")])).encode().replace(b'"N"', literal),
        json.dumps(order(items=[item(unit_price="N")])).encode().replace(b'"N"', literal),
        literal,  # a bare number: a 422 that echoed it converted it whole
    ]
    dealer = {"name": "N", "phone": "+1 555 0199", "province": "T", "city": "T", "capacity": "N"}
    for url, body in [*(("/orders", b) for b in bodies), ("/dealers", json.dumps(dealer).encode())]:
        body = body.replace(b'"N"', literal)
        started = time.monotonic()
        hostile = asyncio.create_task(
            refusals.expect(422, "POST", url, content=body, headers=headers)
        )
        # The API keeps answering others meanwhile (a stall here took seconds to minutes).
        health = await refusals.stack.http.get("/healthz", timeout=5)
        assert health.status_code == 200
        response = await asyncio.wait_for(hostile, timeout=5)
        assert time.monotonic() - started < 5
        assert literal.decode().lstrip("-").lower()[:4] not in response.text.lower()
        assert len(response.content) < 1000


async def test_nan_and_infinity_json_literals_are_refused(refusals: Refusals) -> None:
    for literal in (b"NaN", b"Infinity", b"-Infinity", b"1e999"):
        body = json.dumps(order(items=[item(unit_price="PRICE")])).encode()
        body = body.replace(b'"PRICE"', literal)
        await refusals.expect(
            422, "POST", "/orders", content=body, headers={"Content-Type": "application/json"}
        )


async def test_the_largest_order_is_exact(stack: Stack) -> None:
    big = [item(product_id=f"p{i}", quantity=10, unit_price="9999999999.99") for i in range(100)]
    placed = await accepted(stack, await stack.http.post("/orders", json=order(items=big)))
    assert placed["total_amount"] == "9999999999990.00"
    assert placed["payment"]["amount"] == "9999999999990.00"


@pytest.mark.parametrize(
    ("url", "params"),
    [
        ("/orders", {"limit": 10**30}),
        ("/orders", {"offset": 10**30}),
        ("/orders", {"limit": -(10**30)}),
        ("/orders", {"offset": -1}),
        ("/orders", {"limit": 0}),
        ("/orders", {"limit": "1e3"}),
        ("/orders", {"limit": "ten"}),
        ("/orders", {"status": "NOPE"}),
        ("/dealers", {"limit": 10**30}),
        ("/dealers", {"offset": 10**30}),
        ("/dealers", {"city": "x" * 101}),
    ],
    ids=repr,
)
async def test_overflowing_and_malformed_query_strings_are_refused(
    refusals: Refusals, url: str, params: dict[str, Any]
) -> None:
    await refusals.expect(422, "GET", url, params=params)


async def test_dealer_with_an_overflowing_capacity_is_refused(refusals: Refusals) -> None:
    dealer = {"name": "N", "phone": "+1 555 0101", "province": "Tehran", "city": "Tehran"}
    for capacity in (10**30, -(10**30), 0, 1001, 1.5, "many"):
        await refusals.expect(422, "POST", "/dealers", json={**dealer, "capacity": capacity})


# --- ids in paths and headers ----------------------------------------------------------

ID_ROUTES = [
    ("GET", "/orders/{}"),
    ("POST", "/orders/{}/cancel"),
    ("POST", "/payments/{}/confirm"),
    ("POST", "/payments/{}/cancel"),
    ("POST", "/deliveries/{}/delivered"),
]
BAD_IDS = ["not-a-uuid", "1", "x" * 10_000, str(uuid.uuid4()) + "0", "%00", "%F0%9F%9A%9A", "'--"]


@pytest.mark.parametrize(("method", "route"), ID_ROUTES, ids=lambda r: str(r))
async def test_malformed_ids_in_paths_are_refused(
    refusals: Refusals, method: str, route: str
) -> None:
    for bad in BAD_IDS:
        await refusals.expect(422, method, route.format(bad))
    # Longer than the server reads as a request line (16 KiB): refused before the app.
    response = await refusals.stack.http.request(method, route.format("x" * 40_000))
    assert 400 <= response.status_code < 500
    assert await snapshot(refusals.stack) == refusals.before


async def test_unknown_ids_are_404(refusals: Refusals) -> None:
    for method, route in ID_ROUTES:
        await refusals.expect(404, method, route.format(uuid.uuid4()))


async def test_bad_idempotency_keys_are_refused(refusals: Refusals) -> None:
    for key in ("", "k" * 201):
        headers = {"Idempotency-Key": key}
        await refusals.expect(422, "POST", "/orders", json=order(), headers=headers)


# --- content types and JSON ------------------------------------------------------------


@pytest.mark.parametrize(
    "content_type",
    [
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        "application/xml",
        "application/octet-stream",
        None,
    ],
)
async def test_wrong_content_types_are_refused(
    refusals: Refusals, content_type: str | None
) -> None:
    headers = {"Content-Type": content_type} if content_type else {}
    body = json.dumps(order()).encode()  # a valid order, but not declared as JSON
    await refusals.expect({415, 422}, "POST", "/orders", content=body, headers=headers)


async def test_form_data_is_refused(refusals: Refusals) -> None:
    form = {"customer_id": "c", "province": "Tehran", "city": "Tehran"}
    await refusals.expect({415, 422}, "POST", "/orders", data=form)
    await refusals.expect({415, 422}, "POST", "/orders", files={"items": ("i.json", b"[]")})
    await refusals.expect({415, 422}, "POST", "/dealers", data={"name": "n"})


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"not json",
        b'{"customer_id": "c",',
        b"{'customer_id': 'c'}",
        b'{"customer_id": "c"} trailing',
        b"\xff\xfe\x00",
        b'{"customer_id": "\xc3\x28"}',
        b"null",
        b"[]",
        b"[" + json.dumps(ORDER).encode() + b"]",
        b'"a string"',
        b"42",
        b"true",
        b"{}",
        b"[" * 100_000 + b"]" * 100_000,
        b'{"a":' * 50_000 + b"1" + b"}" * 50_000,
    ],
    ids=lambda raw: repr(raw[:30]),
)
async def test_invalid_json_and_non_object_bodies_are_refused(
    refusals: Refusals, raw: bytes
) -> None:
    headers = {"Content-Type": "application/json"}
    await refusals.expect(422, "POST", "/orders", content=raw, headers=headers)
    await refusals.expect(422, "POST", "/dealers", content=raw, headers=headers)


async def test_duplicate_keys_are_refused(refusals: Refusals) -> None:
    valid = json.dumps(order(city="Tehran"))
    # The same key twice: which value did the client mean? Neither is guessed.
    for duplicate in (
        valid.replace('"city": "Tehran"', '"city": "Tehran", "city": "Isfahan"'),
        valid.replace('"unit_price": "12.50"', '"unit_price": "12.50", "unit_price": "0.01"'),
        valid.replace('"city": "Tehran"', '"city": "Tehran", "city": "Tehran"'),
    ):
        assert duplicate != valid
        response = await refusals.expect(
            422, "POST", "/orders", content=duplicate, headers={"Content-Type": "application/json"}
        )
        assert "duplicate key" in json.dumps(response.json())
    dealer = '{"name": "n", "name": "m", "phone": "+1 555", "province": "T", "city": "T"}'
    await refusals.expect(
        422, "POST", "/dealers", content=dealer, headers={"Content-Type": "application/json"}
    )


async def test_unexpected_fields_and_wrong_types_are_refused(refusals: Refusals) -> None:
    for body in (
        order(items=None),
        order(items={"product_id": "p"}),
        order(items=[None]),
        order(items=["book"]),
        order(items=[{**item(), "discount": "100%"}]),
        order(city=["Tehran"]),
        order(city={"$ne": None}),
        order(customer_id=12345),
        {k: v for k, v in order().items() if k != "city"},
    ):
        await refusals.expect(422, "POST", "/orders", json=body)
