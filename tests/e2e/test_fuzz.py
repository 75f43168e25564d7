"""A property-based fuzzer on every route, body, number, header and query string of the API.

Schemathesis (test_schemathesis.py) generates requests from the OpenAPI document; this one
generates what a hostile client sends instead: JSON of any shape with the API's own field
names, numbers written any way JSON allows (``1e200000``, 40-digit integers, ``-0.0``), text
with control, bidirectional and surrogate characters, malformed ``Prefer`` and
``Idempotency-Key`` headers, wrong content types, and query strings of every kind, to every
route of the app with valid credentials (a customer's or an operator's), with none, and with
broken ones.

Every answer must be:

- never a 5xx, and answered within ``ANSWER_WITHIN`` seconds (a stall of the event loop is a
  failure: the client's timeout raises);
- a 4xx (or a 2xx for the reads and the rare request that is valid by chance) whose body is
  JSON with a ``detail``, and small;
- for a 4xx, nothing written: the rows of every table and the workflows on the server are
  counted before and after.

``FUZZ_EXAMPLES`` sets the number of requests (CI runs a few hundred with a fixed seed, so a
run is repeatable; ``make fuzz`` runs thousands with a fresh seed each time).
"""

import asyncio
import json
import os
import time
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from api.app import create_app
from settings import Settings
from tests.api.test_openapi_security import route_keys
from tests.e2e.conftest import SecuredApi, Stack
from tests.e2e.test_hostile_input import row_counts, settled_snapshot

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "300"))
ANSWER_WITHIN = 5.0  # seconds: far above any refusal's time, far below a stalled loop's
MAX_ERROR_BYTES = 4096
FUZZ_CUSTOMER = "fuzzer"

# --- what is generated ---------------------------------------------------------------------

FIELDS = [
    "customer_id",
    "items",
    "product_id",
    "quantity",
    "unit_price",
    "province",
    "city",
    "name",
    "phone",
    "capacity",
    "status",
    "reason",
]


@dataclass(frozen=True)
class Raw:
    """A JSON number written exactly as ``text`` (json.dumps would normalise it)."""

    text: str


def raw_numbers() -> st.SearchStrategy[Raw]:
    mantissa = st.from_regex(r"-?(0|[1-9][0-9]{0,45})(\.[0-9]{1,45})?", fullmatch=True)
    exponent = st.one_of(
        st.integers(-400, 400), st.integers(-(10**7), 10**7), st.sampled_from([999999, -999999])
    )
    with_exponent = st.builds(
        lambda m, e, marker: f"{m}{marker}{e:+d}" if e < 0 else f"{m}{marker}{e}",
        mantissa,
        exponent,
        st.sampled_from(["e", "E"]),
    )
    return st.one_of(mantissa, with_exponent).map(Raw)


TEXT = st.one_of(
    st.text(max_size=30),
    st.text(st.characters(codec="utf-8"), max_size=200),
    st.sampled_from(
        [
            "",
            " ",
            "ß" * 100,
            "x" * 101,
            "\u202etset",
            "Teh\x00ran",
            "\ud800",
            "12.50",
            "1e200000",
            "NaN",
            "²",
            "0x10",
            "٣",
        ]
    ),
)
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(10**45), max_value=10**45),
    st.floats(allow_nan=False, allow_infinity=False),
    st.decimals(allow_nan=False, allow_infinity=False, places=None).map(lambda d: Raw(str(d))),
    raw_numbers(),
    TEXT,
)
JSON_VALUES = st.recursive(
    SCALARS,
    lambda children: st.one_of(
        st.lists(children, max_size=5),
        st.dictionaries(
            st.one_of(st.sampled_from(FIELDS), st.text(max_size=10)), children, max_size=6
        ),
    ),
    max_leaves=25,
)


def near_order() -> st.SearchStrategy[dict[str, Any]]:
    """An order nearly valid, with any of its values replaced: the deep paths of validation.
    Never in the fuzzer's own customer's name, so one valid by chance is refused (403)."""
    item = st.fixed_dictionaries(
        {
            "product_id": st.one_of(st.just("book"), JSON_VALUES),
            "quantity": st.one_of(st.integers(1, 10), JSON_VALUES),
            "unit_price": st.one_of(st.just("12.50"), JSON_VALUES),
        }
    )
    return st.fixed_dictionaries(
        {
            "customer_id": st.one_of(st.just("someone-else"), JSON_VALUES).filter(
                lambda c: c != FUZZ_CUSTOMER
            ),
            "items": st.one_of(st.lists(item, min_size=1, max_size=3), JSON_VALUES),
            "province": st.one_of(st.just("Tehran"), JSON_VALUES),
            "city": st.one_of(st.just("Tehran"), JSON_VALUES),
        }
    )


def near_dealer() -> st.SearchStrategy[dict[str, Any]]:
    """A dealer nearly valid, its capacity and places any JSON (a valid one is added: 201)."""
    return st.fixed_dictionaries(
        {
            "name": st.one_of(st.just("Fuzz"), JSON_VALUES),
            "phone": st.one_of(st.just("+1 555 0100"), JSON_VALUES),
            "province": st.one_of(st.just("Tehran"), JSON_VALUES),
            "city": st.one_of(st.just("Tehran"), JSON_VALUES),
            "capacity": st.one_of(st.integers(1, 5), JSON_VALUES),
        }
    )


def encode(value: Any) -> str:
    """JSON text of ``value``, with each :class:`Raw` number written as it is."""
    if isinstance(value, Raw):
        return value.text
    if isinstance(value, dict):
        return "{" + ",".join(f"{json.dumps(k)}:{encode(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ",".join(encode(v) for v in value) + "]"
    return json.dumps(value)


BODIES = st.one_of(
    near_order().map(encode),
    near_dealer().map(encode),
    JSON_VALUES.map(encode),
    st.binary(max_size=200).map(lambda b: b.decode("latin-1")),
    st.sampled_from(["", "{", '{"a":1,"a":2}', "[" * 1000, "NaN", "1e200000", '"\\ud800"']),
)
# Header values an HTTP/1.1 client can send at all (visible Latin-1, inner spaces; anything
# else the server's parser refuses before the app sees it).
HEADER_TEXT = st.one_of(
    st.text(
        st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"),
        max_size=60,
    ).map(lambda t: t.strip(" ")),
    st.sampled_from(["wait=5", "wait=²", "wait=99999999999", "wait=", 'wait="3"', 'x=",wait=1']),
)
CONTENT_TYPES = st.sampled_from(
    ["application/json", "application/json; charset=latin-1", "text/plain", "", "*/*"]
)


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    body: str | None
    headers: dict[str, str]
    params: list[tuple[str, str | int | float | bool | None]]
    credential: str


def routes() -> list[tuple[str, str]]:
    """Every method and path the app serves (the hidden alias of POST /orders too)."""
    app = create_app(Settings(auth_mode="dev"))
    served = (key.split(" ", 1) for key in sorted(route_keys(app)))
    return [(method, path) for method, path in served if not path.startswith("/docs")]


def path_of(template: str, ids: list[str]) -> str:
    """``template`` with each ``{parameter}`` replaced by the next of ``ids``."""
    path = template
    for index in range(template.count("{")):
        open_at, close_at = path.index("{"), path.index("}")
        path = path[:open_at] + ids[index % len(ids)] + path[close_at + 1 :]
    return path


ID = st.one_of(
    st.uuids().map(str),  # unknown: 404
    st.text(
        st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters="/?#%"),
        min_size=1,
        max_size=40,
    ),
    st.sampled_from(["%00", "%FF", "%ED%A0%80", "1e200000", "x" * 200]),
)
QUERY = st.lists(
    st.tuples(
        st.sampled_from(
            ["status", "customer_id", "limit", "offset", "pending", "city", "province", "x"]
        ),
        st.one_of(TEXT.filter(lambda t: "\ud800" not in t), raw_numbers().map(lambda r: r.text)),
    ),
    max_size=4,
)


@st.composite
def requests(draw: Any, served: list[tuple[str, str]]) -> Request:
    method, template = draw(st.sampled_from(served))
    headers: dict[str, str] = {}
    if draw(st.booleans()):
        headers["Content-Type"] = draw(CONTENT_TYPES)
    if draw(st.booleans()):
        headers["Prefer"] = draw(HEADER_TEXT)
    if draw(st.booleans()):
        headers["Idempotency-Key"] = draw(HEADER_TEXT)
    return Request(
        method=method,
        path=path_of(template, draw(st.lists(ID, min_size=1, max_size=2))),
        body=draw(BODIES)
        if method in ("POST", "PUT", "PATCH") and draw(st.integers(0, 9))
        else None,
        headers=headers,
        params=draw(QUERY),
        credential=draw(
            st.sampled_from(["customer", "customer", "operator", "operator", "none", "broken"])
        ),
    )


# --- the fuzzer ----------------------------------------------------------------------------


class Fuzzer:
    """Sends generated requests from a worker thread while the test's loop serves them."""

    def __init__(self, stack: Stack, secured: SecuredApi, loop: asyncio.AbstractEventLoop) -> None:
        self.stack = stack
        self.loop = loop
        self.credentials = {
            "customer": secured.customer(FUZZ_CUSTOMER),
            "operator": secured.operator(),
            "none": {},
            "broken": {"Authorization": "Bearer not.a.token", "X-API-Key": "\x7f"},
        }
        self.http = httpx.Client(base_url=str(secured.http.base_url), timeout=ANSWER_WITHIN)
        self.before: dict[str, int] | None = None
        self.answers: dict[int, int] = {}

    def counts(self) -> dict[str, int]:
        counts = row_counts(self.stack.engine)
        future = asyncio.run_coroutine_threadsafe(self.stack.client.count_workflows(), self.loop)
        counts["workflows"] = future.result(timeout=10).count
        return counts

    def send(self, request: Request) -> None:
        if self.before is None:
            self.before = self.counts()
        headers = {**self.credentials[request.credential], **request.headers}
        started = time.monotonic()
        response = self.http.request(
            request.method,
            request.path,
            content=request.body.encode("utf-8", "surrogatepass")
            if request.body is not None
            else None,
            headers=[(k.encode(), v.encode("latin-1", "replace")) for k, v in headers.items()],
            params=request.params,
        )
        took = time.monotonic() - started
        shown = f"{request} -> {response.status_code} {response.text[:300]!r}"
        self.answers[response.status_code] = self.answers.get(response.status_code, 0) + 1
        assert response.status_code < 500, shown
        assert took < ANSWER_WITHIN, f"{took:.1f} s: {shown}"
        if response.status_code >= 400:
            assert response.headers["content-type"].startswith("application/json"), shown
            assert len(response.content) <= MAX_ERROR_BYTES, shown
            assert "detail" in json.loads(response.content), shown
            after = self.counts()
            assert after == self.before, f"{shown} changed state: {self.before} -> {after}"
        elif request.method != "GET":
            self.before = None  # a valid dealer, added: count afresh before the next request

    def fuzz(self) -> None:
        served = routes()

        @settings(
            max_examples=EXAMPLES,
            derandomize="FUZZ_EXAMPLES" not in os.environ,
            deadline=None,
            database=None,
            phases=[Phase.generate, Phase.shrink],
            suppress_health_check=list(HealthCheck),
        )
        @given(request=requests(served))
        def check(request: Request) -> None:
            self.send(request)

        check()


@pytest.fixture(scope="module", autouse=True)
async def _settled(stack: Stack) -> None:
    await settled_snapshot(stack)


async def test_no_request_however_hostile_gets_a_5xx_a_stall_or_a_write(
    stack: Stack, secured: SecuredApi
) -> None:
    fuzzer = Fuzzer(stack, secured, asyncio.get_running_loop())
    try:
        await asyncio.to_thread(fuzzer.fuzz)
    finally:
        fuzzer.http.close()
    assert sum(fuzzer.answers.values()) >= EXAMPLES
    # The requests reached the routes' own checks, not only the credential check.
    assert {401, 404, 422} <= set(fuzzer.answers), fuzzer.answers
    assert fuzzer.answers.get(401, 0) < 0.6 * sum(fuzzer.answers.values()), fuzzer.answers
