"""``ordersaga``: the command line of the order saga.

    ordersaga up                       # the one-command run (same as make run)
    ordersaga demo                     # four orders: delivered, cancelled, timed out, no dealer
    ordersaga orders [--status S]      # list orders
    ordersaga order ID [--follow]      # one order, and its saga: steps or events
    ordersaga stuck [--older-than S]   # orders waiting longer than expected, and why
    ordersaga cancel ID                # cancel an order before its pivot (it compensates)
    ordersaga dealers list|add ...     # list or add delivery people
    ordersaga dead-letters list|replay # events no consumer could apply (choreography);
                                       # replay one by id, or in bulk by --consumer,
                                       # --type, --since, --until (or --all)
    ordersaga builds                   # the saga's builds, and the open sagas on each

Talks to the API at ``--api`` (default http://127.0.0.1:8000). ``demo`` places its orders
through the door, with the running system's settings (``--system``; the environment wins).
"""

import argparse
import asyncio
import os
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent
DEMO_PATHS = ("delivered", "customer cancel", "payment timeout", "no dealer")
DEMO_PROVINCE = "Demo"


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


def _refused(response: httpx.Response) -> int:
    """Say on stderr why the API refused a call (its problem's detail); the exit code, 1."""
    try:
        body = response.json()
    except ValueError:  # not the API's answer (a proxy's error page, say)
        body = {"detail": response.text.strip() or response.reason_phrase}
    detail = body.get("detail") if isinstance(body, dict) else body
    if isinstance(detail, list):  # validation errors: where, and what is wrong there
        detail = "; ".join(
            f"{'.'.join(map(str, e.get('loc', [])[1:]))}: {e.get('msg')}"
            if isinstance(e, dict)
            else str(e)
            for e in detail
        )
    print(f"{response.status_code}: {detail}", file=sys.stderr)
    return 1


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
    phase: str | None = body.get("phase")
    return phase


def _settings(args: argparse.Namespace) -> Any:
    """The running system's settings: the environment's, then ``--system``'s file; a wrong
    setting ends the command with one line saying which."""
    from settings import load_settings

    system = Path(args.system)
    return load_settings("ordersaga", (system,) if system.exists() else ())


async def _demo_path(
    http: httpx.AsyncClient, sagas: Any, windows: Any, path: str, city: str
) -> tuple[str, ...]:
    from domain.payloads import OrderItem, OrderRequest

    no_dealer = path == "no dealer"
    request = OrderRequest(
        customer_id="demo-customer",
        items=[OrderItem(product_id="demo-book", quantity=2, unit_price=Decimal("12.50"))],
        province=DEMO_PROVINCE,
        # The demo's own city (its own dealer), or one no dealer serves.
        city=f"Nowhere {uuid.uuid4().hex[:6]}" if no_dealer else city,
    )
    order_id = (await sagas.place(request, None, timeouts=windows)).order_id
    body = await _wait_for_order(http, order_id, lambda b: b.get("payment") is not None, 30)
    if body.get("payment") is None:
        raise SystemExit(f"order {order_id} got no payment within 30 s: is the worker running?")
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
        str(body.get("failure_type") or "-"),
        str(body.get("workflow_url") or f"ordersaga order {order_id}"),
    )


async def demo(args: argparse.Namespace) -> int:
    """Drive one order down each path, in the running system's style, and print the outcomes
    with where to see each saga."""
    from bootstrap import open_parts
    from domain.payloads import SagaTimeouts

    settings = _settings(args)
    # Short windows, for this demo's orders only, so every path ends in seconds.
    windows = SagaTimeouts(
        payment_window=timedelta(seconds=5),
        dealer_assignment_window=timedelta(seconds=3),
        dealer_retry_initial_interval=timedelta(seconds=0.5),
    )
    progress = Progress(len(DEMO_PATHS), f"demo ({settings.saga_style})")
    rows = []
    async with _client(args) as http, open_parts(settings) as parts:
        # Its own dealer and city: the seeded dealers may all be busy with earlier orders.
        city = f"Demo City {uuid.uuid4().hex[:6]}"
        dealer = {
            "name": "Demo Dealer",
            "phone": f"+0 {uuid.uuid4().int % 10**10:010d}",
            "province": DEMO_PROVINCE,
            "city": city,
            "capacity": 1,
        }
        added = await http.post("/dealers", json=dealer)
        if added.status_code != 201:
            print(f"cannot add the demo's dealer: {added.status_code} {added.text}")
            return 1
        for path in DEMO_PATHS:
            rows.append(await _demo_path(http, parts.sagas, windows, path, city))
            progress.step(f"{path}: {rows[-1][1]}")
    print(_table(rows, ("path", "order", "payment", "delivery", "failure", "the saga")))
    return 0


async def orders(args: argparse.Namespace) -> int:
    params: dict[str, Any] = {"limit": args.limit}
    if args.status:
        params["status"] = args.status
    async with _client(args) as http:
        response = await http.get("/orders", params=params)
    if response.status_code != 200:
        return _refused(response)
    page = response.json()
    rows = [
        (
            o["order_id"],
            o["status"],
            o["style"],
            o["customer_id"],
            o["total_amount"],
            o["city"],
            o["created_at"][:19],
        )
        for o in page["items"]
    ]
    print(_table(rows, ("order", "status", "style", "customer", "total", "city", "created")))
    print(f"{len(rows)} of {page['total']} order(s)")
    return 0


FINAL_PHASES = ("DELIVERED", "CANCELLED")


def _print_order(body: dict[str, Any], saga: Any) -> None:
    """The order's state, then its saga's account: a workflow's steps, compensations and
    signals (orchestration), or every event with who applied it (choreography)."""
    payment = body.get("payment") or {}
    delivery = body.get("delivery") or {}
    print(
        f"order {body['order_id']} ({body['style']}): {body['phase']}"
        f"{' / ' + body['failure_type'] if body.get('failure_type') else ''}"
    )
    print(
        f"  order {body.get('status')}  payment {payment.get('status', '-')}"
        f" (decision {payment.get('decision') or '-'})  delivery {delivery.get('status', '-')}"
    )
    if body.get("workflow_url"):
        print(f"  Temporal Web UI: {body['workflow_url']}")
    if isinstance(saga, list):  # a choreographed order's event log
        rows = [
            (
                e["occurred_at"][11:23],
                e["type"],
                e["source"],
                "published" if e["published_at"] else "in outbox",
                ", ".join(
                    f"{c['consumer']}"
                    + (f" x{c['deliveries']}" if c["deliveries"] > 1 else "")
                    + (f": {c['note']}" if c.get("note") else "")
                    for c in e["consumed"]
                )
                + "".join(f" DEAD LETTER {d['id']}: {d['error']}" for d in e["dead_letters"]),
            )
            for e in saga
        ]
        print(_table(rows, ("at", "event", "from", "", "applied by")))
    elif isinstance(saga, dict):  # an orchestrated saga's state
        steps = " -> ".join(s["name"] for s in saga.get("steps", []))
        undone = " -> ".join(c["name"] for c in saga.get("compensations", []))
        print(f"  steps: {steps or '-'}")
        if undone:
            print(f"  compensations: {undone}")


async def order(args: argparse.Namespace) -> int:
    """Show one order and its saga; with --follow, again on every change until it ends."""
    async with _client(args) as http:
        shown = None
        while True:
            response = await http.get(f"/orders/{args.order_id}")
            if response.status_code != 200:
                return _refused(response)
            body = response.json()
            account = await http.get(f"/orders/{args.order_id}/saga")
            # The saga's account is an operator's read: without one, the order alone.
            saga = account.json() if account.status_code == 200 else None
            if (body, saga) != shown:
                _print_order(body, saga)
                shown = (body, saga)
            if not args.follow or body["phase"] in FINAL_PHASES:
                return 0
            await asyncio.sleep(0.5)


async def stuck(args: argparse.Namespace) -> int:
    """The orders whose saga waits longer than expected, longest first, and why."""
    params: dict[str, Any] = {"limit": args.limit}
    if args.older_than is not None:
        params["older_than_seconds"] = args.older_than
    async with _client(args) as http:
        response = await http.get("/orders/stuck", params=params)
    if response.status_code != 200:
        return _refused(response)
    found = response.json()
    rows = [
        (o["order_id"], o["style"], o["phase"], o["since"][:19], o["waiting_for"]) for o in found
    ]
    print(_table(rows, ("order", "style", "phase", "since (UTC)", "waiting for")))
    for o in found:
        print(f"\n{o['order_id']}: {o['why']}")
        if o.get("error"):
            attempts = f" (attempt {o['attempts']})" if o.get("attempts") else ""
            print(f"  last error{attempts}: {o['error']}")
        if o.get("workflow_url"):
            print(f"  Temporal Web UI: {o['workflow_url']}")
    print(f"{len(found)} stuck order(s)")
    return 0


async def cancel(args: argparse.Namespace) -> int:
    """Cancel an order before its pivot: its saga compensates (409 after the pivot)."""
    async with _client(args) as http:
        response = await http.post(f"/orders/{args.order_id}/cancel")
    if response.status_code != 202:
        return _refused(response)
    print(f"order {args.order_id}: cancel requested; its saga compensates")
    return 0


def _utc_unless_offset(text: str) -> str:
    """An ISO 8601 time, read as UTC when it has no offset (the API needs one); anything
    else as typed, for the API to refuse."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return text
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).isoformat()


async def replay_dead_letters(args: argparse.Namespace) -> int:
    """Replay one dead letter by id, or every pending one the filters match."""
    chosen: dict[str, Any] = {
        name: _utc_unless_offset(getattr(args, name)) if name in ("since", "until") else value
        for name in ("consumer", "type", "since", "until")
        if (value := getattr(args, name)) is not None
    }
    if args.dead_letter_id is not None and (chosen or args.all):
        print("give a dead letter's id, or filters, not both", file=sys.stderr)
        return 2
    if args.dead_letter_id is None and not chosen and not args.all:
        print("give a dead letter's id, filters, or --all", file=sys.stderr)
        return 2
    async with _client(args) as http:
        if args.dead_letter_id is not None:
            response = await http.post(f"/dead-letters/{args.dead_letter_id}/replay")
        else:
            response = await http.post("/dead-letters/replay", json=chosen or {"all": True})
    if response.status_code != 202:
        return _refused(response)
    body = response.json()
    print(body["detail"] if "detail" in body else f"{body['queued']} dead letter(s) queued")
    return 0


async def dead_letters(args: argparse.Namespace) -> int:
    if args.action == "replay":
        return await replay_dead_letters(args)
    async with _client(args) as http:
        response = await http.get("/dead-letters", params={"pending": not args.all})
    if response.status_code != 200:
        return _refused(response)
    rows = [
        (
            d["id"],
            d["failed_at"][:19],
            d["consumer"],
            d["order_id"],
            d["deliveries"],
            "replayed" if d["replayed_at"] else "waiting",
            d["error"][:60],
        )
        for d in response.json()
    ]
    print(_table(rows, ("id", "failed", "consumer", "order", "tries", "", "error")))
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
                return _refused(response)
            listed = [response.json()]
        else:
            response = await http.get("/dealers")
            if response.status_code != 200:  # e.g. 401: a secured API and no --api-key
                return _refused(response)
            listed = response.json()
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


async def show_builds(args: argparse.Namespace) -> int:
    """The builds of the workers' deployment (Temporal, settings from the environment): which
    is current, which drain, and how many open sagas each still has."""
    from sagas.builds import builds
    from sagas.temporal import connect_temporal
    from versions import code_build_id

    settings = _settings(args)
    client = await connect_temporal(settings)
    found = await builds(client, settings.worker_deployment_name)
    if not found:
        print(f"no worker has run in deployment {settings.worker_deployment_name} yet")
        return 0
    here = settings.worker_build_id or code_build_id()
    rows = [
        (
            b.build_id + (" (this code)" if b.build_id == here else ""),
            b.status,
            b.open_sagas,
            b.created.strftime("%Y-%m-%d %H:%M:%S"),
        )
        for b in found
    ]
    print(f"deployment {settings.worker_deployment_name}:")
    print(_table(rows, ("build", "status", "open sagas", "created (UTC)")))
    return 0


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="ordersaga", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    top.add_argument("--api", default=os.environ.get("ORDERSAGA_API", "http://127.0.0.1:8000"))
    top.add_argument(
        "--system",
        default=os.environ.get("ORDERSAGA_SYSTEM", str(ROOT / "data" / "system.env")),
        help="the running system's settings, written by make run (the environment wins)",
    )
    top.add_argument(
        "--api-key",
        default=os.environ.get("ORDERSAGA_API_KEY"),
        help="sent as X-API-Key when the API requires one",
    )
    commands = top.add_subparsers(dest="command", required=True)
    commands.add_parser("up", help="run Temporal, NATS, the worker and the API (make run)")
    commands.add_parser("demo", help="one order down each path, with Web UI links")
    listing = commands.add_parser("orders", help="list orders")
    listing.add_argument("--status", choices=["PENDING", "CONFIRMED", "DELIVERED", "CANCELLED"])
    listing.add_argument("--limit", type=int, default=20)
    one = commands.add_parser("order", help="one order and its saga (steps or events)")
    one.add_argument("order_id")
    one.add_argument("--follow", action="store_true", help="show each change until it ends")
    dead = commands.add_parser("dead-letters", help="events no consumer could apply")
    dead_actions = dead.add_subparsers(dest="action", required=True)
    dead_list = dead_actions.add_parser("list")
    dead_list.add_argument("--all", action="store_true", help="the replayed ones too")
    replay = dead_actions.add_parser(
        "replay", help="deliver one again (by id), or every pending one the filters match"
    )
    replay.add_argument("dead_letter_id", nargs="?")
    replay.add_argument("--consumer", help="its consumer, e.g. payments-order_created")
    replay.add_argument("--type", help="its event's type, e.g. order_created")
    replay.add_argument("--since", help="failed at or after (ISO 8601; UTC if no offset)")
    replay.add_argument("--until", help="failed before (ISO 8601; UTC if no offset)")
    replay.add_argument("--all", action="store_true", help="every pending dead letter")
    stuck_orders = commands.add_parser("stuck", help="orders waiting longer than expected, why")
    stuck_orders.add_argument(
        "--older-than", type=int, metavar="SECONDS", help="every unfinished order this idle"
    )
    stuck_orders.add_argument("--limit", type=int, default=100)
    cancelling = commands.add_parser("cancel", help="cancel an order before its pivot")
    cancelling.add_argument("order_id")
    commands.add_parser("builds", help="the saga's builds and the open sagas pinned to each")
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
    command = {
        "demo": demo,
        "orders": orders,
        "order": order,
        "dealers": dealers,
        "dead-letters": dead_letters,
        "stuck": stuck,
        "cancel": cancel,
        "builds": show_builds,
    }[args.command]
    from nats.errors import Error as NatsError
    from sqlalchemy.exc import OperationalError

    from sagas.temporal import TemporalConnectError

    try:
        sys.exit(asyncio.run(command(args)))
    except httpx.ConnectError:
        sys.exit(f"ordersaga: cannot reach the API at {args.api}: is it running (ordersaga up)?")
    except TemporalConnectError as err:
        sys.exit(f"ordersaga: {err}")
    except (OSError, NatsError, OperationalError) as err:  # NATS or the database, unreachable
        sys.exit(f"ordersaga: cannot reach a service the command needs: {err}")


if __name__ == "__main__":
    main()
