"""Schemathesis against the running API's own OpenAPI document (the real stack over HTTP).

Every operation gets valid (positive) and invalid (negative) requests generated from the
schema, with a fixed seed. Each answer must not be a 5xx, must use a documented status code,
content type, headers and body schema; valid data must be accepted (or 404/409 for ids that
do not exist), invalid data refused. A refused request (4xx) must change nothing: the rows of
every table and the workflows on the server are counted before and after it. Accepted
requests are fine: they start real sagas (which then wait for a payment decision).

The stack (uvicorn, workers) runs on the test's event loop, so the synchronous Schemathesis
and Hypothesis calls run in a worker thread while the loop serves them.
"""

import asyncio
import json
import os
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import Case, GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    positive_data_acceptance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.e2e.conftest import SecuredApi, Stack, poison_event
from tests.e2e.test_hostile_input import row_counts

MAX_EXAMPLES = 25
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    positive_data_acceptance,
    negative_data_rejection,
]


class Fuzzer:
    """Runs generated cases against the stack from a worker thread."""

    def __init__(self, stack: Stack, loop: asyncio.AbstractEventLoop) -> None:
        self.stack = stack
        self.loop = loop
        self.base_url = str(stack.http.base_url).rstrip("/")
        self.http = requests.Session()
        self.before: dict[str, int] | None = None
        self.calls: dict[int, int] = {}
        self.accepted_order: str | None = None  # a 202's order, its saga still writing it

    def counts(self) -> dict[str, int]:
        counts = row_counts(self.stack.engine)
        future = asyncio.run_coroutine_threadsafe(self.stack.client.count_workflows(), self.loop)
        counts["workflows"] = future.result(timeout=10).count
        return counts

    def settled_counts(self, within: float = 15, quiet: float = 0.05) -> dict[str, int]:
        """Counts once an accepted request's saga has stopped adding rows (and is visible):
        the same for ``quiet`` seconds."""
        deadline = time.monotonic() + within
        while self.accepted_order is not None:
            # Accepted (202) before its saga wrote the order and its payment: wait for both.
            order = self.http.get(f"{self.base_url}/orders/{self.accepted_order}", timeout=30)
            if order.status_code != 200 or order.json()["phase"] != "CREATING":
                self.accepted_order = None
            else:
                assert time.monotonic() < deadline, f"order never written: {order.text}"
                time.sleep(0.05)
        last, since = self.counts(), time.monotonic()
        while True:
            time.sleep(0.05)
            now = self.counts()
            if now != last:
                assert time.monotonic() < deadline, f"rows kept changing: {last} -> {now}"
                last, since = now, time.monotonic()
            elif time.monotonic() - since >= quiet:
                return now

    def run(self, case: Case[Any]) -> None:
        if self.before is None:
            # The first count waits longer: an earlier test's saga may still be writing an
            # order it accepted, a step's rows a moment after the last one's.
            self.before = self.settled_counts(quiet=0.3 if not self.calls else 0.05)
        positive = case.meta is not None and case.meta.generation.mode.is_positive
        if positive and case.headers and "Idempotency-Key" in case.headers:
            # A generated key may repeat with another body, which is refused (422) by design.
            case.headers["Idempotency-Key"] = f"schemathesis-{uuid.uuid4()}"
        if positive and case.path == "/dead-letters/replay" and isinstance(case.body, dict):
            # A replay of the stack's poison events dead-letters them again a second later, a
            # change the next case would count: a window before any dead letter replays none.
            case.body["until"] = "2000-01-01T00:00:00Z"
        response = case.call(base_url=self.base_url, session=self.http, timeout=30)
        self.calls[response.status_code] = self.calls.get(response.status_code, 0) + 1
        case.validate_response(response, checks=CHECKS)
        if 400 <= response.status_code < 500:
            after = self.counts()
            assert after == self.before, (
                f"{case.method} {case.formatted_path} answered {response.status_code} "
                f"but changed state: {self.before} -> {after}"
            )
        elif case.method != "GET":
            self.before = None  # accepted: take a fresh, settled count before the next case
            if response.status_code == 202 and case.path == "/orders":
                self.accepted_order = response.json()["order_id"]

    def fuzz(self, label: str, mode: GenerationMode) -> None:
        schema = schemathesis.openapi.from_url(
            f"{self.base_url}/openapi.json", config=schemathesis.Config()
        )
        operation = schema.find_operation_by_label(label)
        assert operation is not None, label

        @settings(
            max_examples=MAX_EXAMPLES,
            derandomize=True,  # the same cases on every run
            deadline=None,
            database=None,
            phases=[Phase.explicit, Phase.generate, Phase.shrink],
            suppress_health_check=list(HealthCheck),
        )
        @given(case=operation.as_strategy(generation_mode=mode))
        def check(case: Case[Any]) -> None:
            self.run(case)

        check()


def operations() -> dict[str, bool]:
    """Every operation of the app's OpenAPI document (built without starting anything), and
    whether it takes any input (an operation without one has no invalid request)."""
    from fastapi import FastAPI

    from api.routes import codec, dead_letters, dealers, deliveries, health, orders, payments

    app = FastAPI()
    for module in (orders, payments, deliveries, dealers, dead_letters, codec, health):
        app.include_router(module.router)
    paths: dict[str, Any] = app.openapi()["paths"]
    return {
        f"{method.upper()} {path}": bool(op.get("parameters") or op.get("requestBody"))
        for path, ops in paths.items()
        for method, op in ops.items()
    }


CASES = [
    pytest.param(label, mode, id=f"{label}-{mode}")
    for label, takes_input in operations().items()
    for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
    if takes_input or mode == GenerationMode.POSITIVE
]


@pytest.mark.parametrize(("label", "mode"), CASES)
async def test_the_api_honours_its_schema(stack: Stack, label: str, mode: GenerationMode) -> None:
    fuzzer = Fuzzer(stack, asyncio.get_running_loop())
    try:
        await asyncio.to_thread(fuzzer.fuzz, label, mode)
    finally:
        fuzzer.http.close()
    assert fuzzer.calls, "no request was generated"


async def test_every_operation_of_the_running_app_is_fuzzed(stack: Stack) -> None:
    paths: dict[str, Any] = (await stack.http.get("/openapi.json")).json()["paths"]
    served = {f"{method.upper()} {path}" for path, ops in paths.items() for method in ops}
    assert served == set(operations())


# --- the Schemathesis CLI: every check, every phase ------------------------------------------

ROOT = Path(__file__).resolve().parents[2]
CLI = Path(sys.executable).parent / "schemathesis"
PHASES = "examples,coverage,fuzzing,stateful"
CUSTOMER = "alice"


async def real_ids(
    stack: Stack, http: httpx.AsyncClient, customer: dict[str, str], operator: dict[str, str]
) -> dict[str, str]:
    """A payment awaiting its decision and a delivery in transit, of the customer whose
    headers are ``customer``, and a dead letter, for the operations that need existing ids:
    the CLI then reaches them with real data, not only 404s."""
    city = f"Fuzz City {uuid.uuid4().hex[:6]}"
    dealer = {"name": "Fuzz", "phone": f"+1 {uuid.uuid4().int % 10**9}", "province": "Tehran"}
    added = await http.post(
        "/dealers", json={**dealer, "city": city, "capacity": 1}, headers=operator
    )
    assert added.status_code == 201, added.text
    body = {
        "customer_id": CUSTOMER,
        "items": [{"product_id": "book", "quantity": 1, "unit_price": "9.99"}],
        "province": "Tehran",
        "city": city,
    }
    # Waiting for each order's payment (Prefer: wait): 201 with the order and its payment.
    waiting = {**customer, "Prefer": "wait=10"}
    pending = (await http.post("/orders", json=body, headers=waiting)).json()
    shipped = (await http.post("/orders", json=body, headers=waiting)).json()
    payment = shipped["payment"]["payment_id"]
    confirmed = await http.post(f"/payments/{payment}/confirm", headers=customer)
    assert confirmed.status_code == 202, confirmed.text
    deadline = time.monotonic() + 20
    while True:
        order = (await http.get(f"/orders/{shipped['order_id']}", headers=customer)).json()
        if (order["delivery"] or {}).get("status") == "IN_TRANSIT":
            break
        assert time.monotonic() < deadline, f"the fuzz order never got a dealer: {order}"
        await asyncio.sleep(0.1)
    return {
        "order_id": pending["order_id"],
        "payment_id": pending["payment"]["payment_id"],
        "delivery_id": order["delivery"]["delivery_id"],
        "dead_letter_id": (await poison_event(stack)).id,
    }


def cli_config(ids: dict[str, str], wfc: Path | None) -> str:
    """schemathesis.toml: longer stateful scenarios, the real ids per operation, and with
    ``wfc`` the credentials of two customers who must not see each other's orders and of an
    operator (Web Fuzzing Commons auth: each operation gets the first identity it admits)."""
    operations = {
        "POST /payments/{payment_id}/confirm": "payment_id",
        "POST /payments/{payment_id}/cancel": "payment_id",
        "POST /deliveries/{delivery_id}/delivered": "delivery_id",
        "GET /orders/{order_id}": "order_id",
        "GET /orders/{order_id}/saga": "order_id",
        "POST /orders/{order_id}/cancel": "order_id",
        "POST /dead-letters/{dead_letter_id}/replay": "dead_letter_id",
    }
    lines = []
    if wfc is not None:
        lines += ["[auth.wfc]", f'path = "{wfc}"', 'peers = ["alice", "bob"]', ""]
    lines += [
        "[phases.stateful]",
        "max-steps = 12",
        "[phases.stateful.generation]",
        "max-examples = 40",
    ]
    for name, parameter in operations.items():
        lines += [
            "",
            "[[operations]]",
            f'include-name = "{name}"',
            f'parameters = {{ {parameter} = "{ids[parameter]}" }}',
        ]
    return "\n".join(lines) + "\n"


def wfc_document(secured: SecuredApi) -> dict[str, Any]:
    def entry(name: str, headers: dict[str, str]) -> dict[str, Any]:
        fixed = [{"name": header, "value": value} for header, value in headers.items()]
        return {"name": name, "fixedHeaders": fixed}

    return {
        "auth": [
            entry("alice", secured.customer(CUSTOMER)),
            entry("operator", secured.operator()),
            entry("bob", secured.customer("bob")),
        ]
    }


@pytest.mark.parametrize("auth", ["dev", "required"])
async def test_the_schemathesis_cli_finds_no_failure_with_every_check_and_phase(
    stack: Stack, secured: SecuredApi, tmp_path: Path, auth: str
) -> None:
    """``schemathesis run --checks all`` with the examples, coverage, fuzzing and stateful
    (OpenAPI links) phases, at a small size, against the running stack: the open API
    (AUTH_MODE=dev), and the API with auth required, where the checks also prove that every
    operation refuses a call without credentials and that one customer cannot reach another's
    orders (ignored_auth, object_level_authorization)."""
    wfc: Path | None = None
    if auth == "dev":
        http, customer, operator = stack.http, {}, {}
    else:
        http, customer, operator = secured.http, secured.customer(CUSTOMER), secured.operator()
        wfc = tmp_path / "wfc.json"
        wfc.write_text(json.dumps(wfc_document(secured)))
    config = tmp_path / "schemathesis.toml"
    config.write_text(cli_config(await real_ids(stack, http, customer, operator), wfc))
    base_url = str(http.base_url).rstrip("/")
    process = await asyncio.create_subprocess_exec(
        str(CLI),
        "--config-file",
        str(config),
        "run",
        f"{base_url}/openapi.json",
        "--checks",
        "all",
        "--phases",
        PHASES,
        "--max-examples",
        "10",
        "--seed",
        "1",
        "--workers",
        "1",
        "--request-timeout",
        "30",
        "--no-color",
        cwd=tmp_path,
        env={
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "SCHEMATHESIS_HOOKS": "tests.e2e.schemathesis_hooks",
        },
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output = (await process.communicate())[0].decode(errors="replace")
    assert process.returncode == 0, output[-6000:]
    for phase in ("Examples", "Coverage", "Fuzzing", "Stateful"):
        assert f"✅  {phase}" in output, output[-6000:]
    # Every operation got real data at least once (no operation saw only 404s), and every
    # protected one admitted one of the identities.
    assert "Missing test data" not in output, output[-6000:]
    assert "Authentication failed" not in output, output[-6000:]
