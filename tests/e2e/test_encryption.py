"""Customer data never reaches Temporal in clear: a delivered order's customer id, city and
products are absent from the dev server's database file; the API's codec server shows them
to an operator alone; keys rotate; a payload of a key no longer listed fails clearly.

Its own Temporal dev server, on a database file this test reads byte for byte, with the
workers and an API with auth on, all with the payload key A.
"""

import asyncio
import base64
import time
import uuid
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from google.protobuf.json_format import MessageToDict
from pydantic import SecretStr
from temporalio.api.common.v1 import Payload, Payloads
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from api.app import create_app
from api.auth.tokens import issue_customer_token
from domain import names
from domain.names import SEARCH_ATTRIBUTES
from domain.payloads import SagaState
from domain.status import SagaPhase
from sagas.codec import ENCODING, KEY_ID
from sagas.temporal import data_converter
from settings import Settings
from store.db import make_engine
from tests.conftest import reset_schema, temporal_binary
from tests.e2e.conftest import (
    CUSTOMER_TOKEN_SECRET,
    OPERATOR_KEY,
    ORDER_ID_SECRET,
    TOKEN_TTL,
    SecuredApi,
    serve,
)
from tools.chaos.stack import free_port
from worker import build_workers

UI_URL = "http://temporal-ui.test:8233"


def key(key_id: str) -> SecretStr:
    return SecretStr(f"{key_id}:{base64.b64encode(uuid.uuid4().bytes * 2).decode()}")


KEY_A, KEY_B, KEY_C = key("a"), key("b"), key("c")


@dataclass
class Encrypted:
    """The stack on a Temporal database file, and one delivered order's secrets."""

    http: httpx.AsyncClient
    client: Client
    settings: Settings
    temporal_db: Path


def customer(customer_id: str) -> dict[str, str]:
    token = issue_customer_token(CUSTOMER_TOKEN_SECRET, customer_id, TOKEN_TTL)
    return {"Authorization": f"Bearer {token}"}


async def until(probe: Callable[[], Any], what: str, within: float = 60) -> Any:
    deadline = time.monotonic() + within
    while True:
        found = await probe()
        if found:
            return found
        assert time.monotonic() < deadline, f"never happened within {within} s: {what}"
        await asyncio.sleep(0.2)


@pytest.fixture(scope="module")
async def encrypted(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Encrypted]:
    folder = tmp_path_factory.mktemp("encrypted")
    temporal_db = folder / "temporal.db"
    settings = Settings(
        # SQLite of its own even when DATABASE_URL is PostgreSQL: the session's stack uses that.
        database_url=SecretStr(f"sqlite:///{folder / 'orders.db'}"),
        nats_url=None,
        temporal_ui_url=UI_URL,
        auth_mode="required",
        operator_api_keys=[SecretStr(OPERATOR_KEY)],
        customer_token_secrets=[SecretStr(CUSTOMER_TOKEN_SECRET)],
        order_id_secret=SecretStr(ORDER_ID_SECRET),
        payload_keys=[KEY_A],
    )
    env = await WorkflowEnvironment.start_local(
        data_converter=data_converter(settings),
        port=free_port(),
        dev_server_existing_path=temporal_binary("temporal"),
        search_attributes=list(SEARCH_ATTRIBUTES),
        dev_server_extra_args=["--db-filename", str(temporal_db)],
    )
    settings = settings.model_copy(
        update={"temporal_address": env.client.service_client.config.target_host}
    )
    engine = make_engine(settings.database_url_value)
    reset_schema(engine)
    async with AsyncExitStack() as stack:
        stack.callback(engine.dispose)
        stack.push_async_callback(env.shutdown)
        executor = stack.enter_context(ThreadPoolExecutor(16))
        for worker in build_workers(env.client, engine, executor):
            await stack.enter_async_context(worker)
        http = await stack.enter_async_context(serve(create_app(settings)))
        yield Encrypted(http, env.client, settings, temporal_db)


@pytest.fixture(scope="module")
async def delivered(encrypted: Encrypted) -> dict[str, str]:
    """One order placed, confirmed and delivered through the API: its secrets and ids."""
    tag = uuid.uuid4().hex[:10]
    secrets = {
        "customer_id": f"cust-{tag}",
        "city": f"Secretville {tag}",
        "product_id": f"rare-book-{tag}",
    }
    http, operator = encrypted.http, SecuredApi.operator()
    dealer = {
        "name": "Dealer",
        "phone": f"+1 {uuid.uuid4().int % 10**9}",
        "province": "Gilan",
        "city": secrets["city"],
        "capacity": 1,
    }
    assert (await http.post("/dealers", json=dealer, headers=operator)).status_code == 201
    asks = customer(secrets["customer_id"])
    order = {
        "customer_id": secrets["customer_id"],
        "items": [{"product_id": secrets["product_id"], "quantity": 1, "unit_price": "9.90"}],
        "province": "Gilan",
        "city": secrets["city"],
    }
    placed = await http.post("/orders", json=order, headers={**asks, "Prefer": "wait=20"})
    assert placed.status_code == 201, placed.text
    order_id, payment_id = placed.json()["order_id"], placed.json()["payment"]["payment_id"]
    confirmed = await http.post(f"/payments/{payment_id}/confirm", headers=asks)
    assert confirmed.status_code == 202, confirmed.text

    async def phase(wanted: str) -> dict[str, Any] | None:
        body: dict[str, Any] = (await http.get(f"/orders/{order_id}", headers=asks)).json()
        return body if body.get("phase") == wanted else None

    moving = await until(lambda: phase("IN_TRANSIT"), "the order in transit")
    delivery_id = moving["delivery"]["delivery_id"]
    reported = await http.post(f"/deliveries/{delivery_id}/delivered", headers=operator)
    assert reported.status_code == 202, reported.text
    await until(lambda: phase("DELIVERED"), "the order delivered")
    handle = encrypted.client.get_workflow_handle(names.workflow_id_for(order_id))
    await asyncio.wait_for(handle.result(), 60)
    return {**secrets, "order_id": order_id}


async def started_input(client: Client, order_id: str) -> Payload:
    """The saga's input as Temporal stores it (not decoded)."""
    history = await client.get_workflow_handle(names.workflow_id_for(order_id)).fetch_history()
    started = history.events[0].workflow_execution_started_event_attributes
    return started.input.payloads[0]


def as_json(*payloads: Payload) -> dict[str, Any]:
    """The codec server's body, as the Web UI sends it (protobuf JSON)."""
    return MessageToDict(Payloads(payloads=payloads))


def from_json(body: dict[str, Any]) -> list[Payload]:
    return [
        Payload(
            metadata={k: base64.b64decode(v) for k, v in p.get("metadata", {}).items()},
            data=base64.b64decode(p.get("data", "")),
        )
        for p in body["payloads"]
    ]


async def test_no_customer_data_is_in_temporals_database_file(
    encrypted: Encrypted, delivered: dict[str, str]
) -> None:
    workflow_id = names.workflow_id_for(delivered["order_id"]).encode()

    def stored() -> bytes:
        files = sorted(encrypted.temporal_db.parent.glob(encrypted.temporal_db.name + "*"))
        return b"".join(path.read_bytes() for path in files)

    # The workflow id stays readable: it proves the file holds this saga's history.
    await until(lambda: asyncio.to_thread(lambda: workflow_id in stored()), "the history on disk")
    content = stored()
    in_clear = [
        f for f in ("customer_id", "city", "product_id") if delivered[f].encode() in content
    ]
    assert in_clear == []


async def test_an_operator_reads_a_payload_through_the_codec_server(
    encrypted: Encrypted, delivered: dict[str, str]
) -> None:
    sealed = await started_input(encrypted.client, delivered["order_id"])
    assert sealed.metadata["encoding"] == ENCODING
    assert sealed.metadata[KEY_ID] == b"a"
    answer = await encrypted.http.post(
        "/codec/decode", json=as_json(sealed), headers=SecuredApi.operator()
    )
    assert answer.status_code == 200, answer.text
    [clear] = from_json(answer.json())
    assert clear.metadata["encoding"] == b"json/plain"
    for field in ("customer_id", "city", "product_id"):
        assert delivered[field].encode() in clear.data


async def test_the_codec_server_refuses_customers_and_anonymous_callers(
    encrypted: Encrypted, delivered: dict[str, str]
) -> None:
    sealed = await started_input(encrypted.client, delivered["order_id"])
    for path in ("/codec/decode", "/codec/encode"):
        theirs = await encrypted.http.post(
            path, json=as_json(sealed), headers=customer(delivered["customer_id"])
        )
        assert theirs.status_code == 403, theirs.text
        anonymous = await encrypted.http.post(path, json=as_json(sealed))
        assert anonymous.status_code == 401, anonymous.text


async def test_the_web_ui_origin_may_call_the_codec_server_and_no_other_route(
    encrypted: Encrypted,
) -> None:
    preflight = {
        "Origin": UI_URL,
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type,x-namespace",
    }
    codec = await encrypted.http.options("/codec/decode", headers=preflight)
    assert codec.status_code == 200, codec.text
    assert codec.headers["access-control-allow-origin"] == UI_URL
    orders = await encrypted.http.options("/orders", headers=preflight)
    assert "access-control-allow-origin" not in orders.headers
    stranger = await encrypted.http.options(
        "/codec/decode", headers={**preflight, "Origin": "http://elsewhere.test"}
    )
    assert "access-control-allow-origin" not in stranger.headers


async def test_bad_payloads_are_a_clear_422(encrypted: Encrypted) -> None:
    answer = await encrypted.http.post(
        "/codec/decode",
        json={"payloads": [{"metadata": {"encoding": "not base64!"}, "data": ""}]},
        headers=SecuredApi.operator(),
    )
    assert answer.status_code == 422, answer.text
    assert "string_pattern_mismatch" in answer.text
    empty = await encrypted.http.post(
        "/codec/decode", json={"payloads": []}, headers=SecuredApi.operator()
    )
    assert empty.json() == {"payloads": []}


async def test_after_rotation_history_of_the_old_key_reads_and_new_payloads_use_the_new(
    encrypted: Encrypted, delivered: dict[str, str]
) -> None:
    rotated = encrypted.settings.model_copy(update={"payload_keys": [KEY_B, KEY_A]})
    sealed = await started_input(encrypted.client, delivered["order_id"])
    async with serve(create_app(rotated)) as http:
        read = await http.post("/codec/decode", json=as_json(sealed), headers=SecuredApi.operator())
        assert read.status_code == 200, read.text
        assert delivered["city"].encode() in from_json(read.json())[0].data
        written = await http.post(
            "/codec/encode", json=as_json(*from_json(read.json())), headers=SecuredApi.operator()
        )
        assert written.status_code == 200, written.text
        assert from_json(written.json())[0].metadata[KEY_ID] == b"b"
    # A client with the rotated keys reads the whole saga written under A.
    client = await Client.connect(
        encrypted.settings.temporal_address, data_converter=data_converter(rotated)
    )
    workflow_id = names.workflow_id_for(delivered["order_id"])
    handle = client.get_workflow_handle(workflow_id, result_type=SagaState)
    assert (await handle.result()).phase == SagaPhase.DELIVERED


async def test_a_payload_of_a_key_no_longer_listed_fails_naming_its_key_id(
    encrypted: Encrypted, delivered: dict[str, str]
) -> None:
    dropped = encrypted.settings.model_copy(update={"payload_keys": [KEY_C]})
    sealed = await started_input(encrypted.client, delivered["order_id"])
    async with serve(create_app(dropped)) as http:
        answer = await http.post(
            "/codec/decode", json=as_json(sealed), headers=SecuredApi.operator()
        )
    assert answer.status_code == 422, answer.text
    assert "key id 'a', which PAYLOAD_KEYS does not list" in answer.json()["detail"]
