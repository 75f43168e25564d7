"""``ordersaga``: the command line of the order saga.

    ordersaga up                       # the one-command run (same as make run)
    ordersaga demo                     # four orders: delivered, cancelled, timed out, no dealer
    ordersaga orders [--status S]      # list orders
    ordersaga dealers list|add ...     # list or add delivery people

Talks to the API at ``--api`` (default http://127.0.0.1:8000); ``demo`` also starts its
sagas through Temporal (settings from the environment, as the API's) so it can use short
windows and show the timeout and no-dealer paths in seconds rather than half an hour.
"""

import argparse
import asyncio
import os
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent
DEMO_PATHS = ("delivered", "customer cancel", "payment timeout", "no dealer")


def _table(rows: Sequence[Sequence[Any]], header: Sequence[str]) -> str:
    cells = [list(map(str, header)), *[list(map(str, r)) for r in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


class Progress:
    """A one-line progress display for long waits (a TTY gets it redrawn in place)."""

    def __init__(self, total: int, label: str) -> None:
        self.total, self.label, self.done = total, label, 0
        self._tty = sys.stderr.isatty()

    def step(self, note: str) -> None:
        self.done += 1
        bar = "#" * self.done + "." * (self.total - self.done)
        line = f"{self.label} [{bar}] {self.done}/{self.total} {note}"
        print(
            f"\r{line:<100}" if self._tty else line, end="" if self._tty else "\n", file=sys.stderr
        )
        if self._tty and self.done == self.total:
            print(file=sys.stderr)


def _client(args: argparse.Namespace) -> httpx.AsyncClient:
    headers = {"X-API-Key": args.api_key} if args.api_key else {}
    return httpx.AsyncClient(base_url=args.api, headers=headers, timeout=30)


async def _wait_for_order(
    http: httpx.AsyncClient, order_id: str, done: Callable[[dict[str, Any]], bool], within: float
) -> dict[str, Any]:
    """Poll GET /orders/{id} until ``done`` holds or ``within`` seconds pass."""
    deadline = time.monotonic() + within
    while True:
        response = await http.get(f"/orders/{order_id}")
        body: dict[str, Any] = response.json() if response.status_code == 200 else {}
        if (body and done(body)) or time.monotonic() > deadline:
            return body
        await asyncio.sleep(0.3)


def _phase(body: dict[str, Any]) -> str | None:
    phase: str | None = (body.get("saga") or {}).get("phase")
    return phase


async def _demo_path(
    http: httpx.AsyncClient, client: Any, settings: Any, path: str
) -> tuple[str, ...]:
    from domain.payloads import OrderItem, OrderRequest
    from sagas.orchestration import start_order_saga

    no_dealer = path == "no dealer"
    request = OrderRequest(
        customer_id="demo-customer",
        items=[OrderItem(product_id="demo-book", quantity=2, unit_price=Decimal("12.50"))],
        province="Nowhere" if no_dealer else "Tehran",
        city="Atlantis" if no_dealer else "Tehran",
    )
    order_id = str(uuid.uuid4())
    await start_order_saga(
        client,
        order_id,
        request,
        task_queue=settings.workflow_task_queue,
        timeouts=settings.saga_timeouts,
    )
    body = await _wait_for_order(http, order_id, lambda b: b.get("payment") is not None, 30)
    payment_id = body["payment"]["payment_id"]
    if path in ("delivered", "no dealer"):
        await http.post(f"/payments/{payment_id}/confirm")
    elif path == "customer cancel":
        await http.post(f"/payments/{payment_id}/cancel")
    if path == "delivered":
        body = await _wait_for_order(http, order_id, lambda b: _phase(b) == "IN_TRANSIT", 30)
        await http.post(f"/deliveries/{body['delivery']['delivery_id']}/delivered")
    body = await _wait_for_order(
        http, order_id, lambda b: _phase(b) in ("DELIVERED", "CANCELLED"), 60
    )
    return (
        path,
        str(body.get("status")),
        str((body.get("payment") or {}).get("status")),
        str((body.get("delivery") or {}).get("status", "-")),
        str((body.get("saga") or {}).get("failure_type") or "-"),
        str(body.get("workflow_url")),
    )


async def demo(args: argparse.Namespace) -> int:
    """Drive one order down each path and print the outcomes with their Web UI links."""
    from sagas.temporal import connect_temporal
    from settings import Settings

    # Short windows so the timeout and no-dealer paths end within seconds.
    settings = Settings(payment_window_seconds=5, dealer_assignment_window_seconds=3)
    client = await connect_temporal(settings)
    progress = Progress(len(DEMO_PATHS), "demo")
    rows = []
    async with _client(args) as http:
        if not (await http.get("/dealers", params={"city": "Tehran"})).json():
            print("no dealer serves Tehran: run `python -m store seed` (make run does)")
            return 1
        for path in DEMO_PATHS:
            rows.append(await _demo_path(http, client, settings, path))
            progress.step(f"{path}: {rows[-1][1]}")
    print(_table(rows, ("path", "order", "payment", "delivery", "failure", "Temporal Web UI")))
    return 0


async def orders(args: argparse.Namespace) -> int:
    params: dict[str, Any] = {"limit": args.limit}
    if args.status:
        params["status"] = args.status
    async with _client(args) as http:
        response = await http.get("/orders", params=params)
    if response.status_code != 200:
        print(response.text, file=sys.stderr)
        return 1
    page = response.json()
    rows = [
        (
            o["order_id"],
            o["status"],
            o["customer_id"],
            o["total_amount"],
            o["city"],
            o["created_at"][:19],
        )
        for o in page["items"]
    ]
    print(_table(rows, ("order", "status", "customer", "total", "city", "created")))
    print(f"{len(rows)} of {page['total']} order(s)")
    return 0


async def dealers(args: argparse.Namespace) -> int:
    async with _client(args) as http:
        if args.action == "add":
            response = await http.post(
                "/dealers",
                json={
                    "name": args.name,
                    "phone": args.phone,
                    "province": args.province,
                    "city": args.city,
                    "capacity": args.capacity,
                },
            )
            if response.status_code != 201:
                print(f"{response.status_code}: {response.json().get('detail')}", file=sys.stderr)
                return 1
            listed = [response.json()]
        else:
            listed = (await http.get("/dealers")).json()
    rows = [
        (
            d["id"],
            d["name"],
            d["phone"],
            d["province"],
            d["city"],
            f"{d['active_deliveries']}/{d['capacity']}",
        )
        for d in listed
    ]
    print(_table(rows, ("id", "name", "phone", "province", "city", "load")))
    return 0


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="ordersaga", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    top.add_argument("--api", default=os.environ.get("ORDERSAGA_API", "http://127.0.0.1:8000"))
    top.add_argument(
        "--api-key",
        default=os.environ.get("ORDERSAGA_API_KEY"),
        help="sent as X-API-Key when the API requires one",
    )
    commands = top.add_subparsers(dest="command", required=True)
    commands.add_parser("up", help="run Temporal, the worker and the API (make run)")
    commands.add_parser("demo", help="one order down each path, with Web UI links")
    listing = commands.add_parser("orders", help="list orders")
    listing.add_argument("--status", choices=["PENDING", "CONFIRMED", "DELIVERED", "CANCELLED"])
    listing.add_argument("--limit", type=int, default=20)
    dealer = commands.add_parser("dealers", help="list or add dealers")
    actions = dealer.add_subparsers(dest="action", required=True)
    actions.add_parser("list")
    add = actions.add_parser("add")
    add.add_argument("name")
    add.add_argument("phone")
    add.add_argument("province")
    add.add_argument("city")
    add.add_argument("capacity", type=int)
    return top


def main(argv: Sequence[str] | None = None) -> None:
    args = parser().parse_args(argv)
    if args.command == "up":
        os.execvp("bash", ["bash", str(ROOT / "scripts" / "run.sh")])
    command = {"demo": demo, "orders": orders, "dealers": dealers}[args.command]
    try:
        sys.exit(asyncio.run(command(args)))
    except httpx.ConnectError:
        sys.exit(f"cannot reach the API at {args.api}: is it running (ordersaga up)?")


if __name__ == "__main__":
    main()
