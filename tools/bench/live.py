"""One order at a time through a running API, as a customer and a dealer see it: the
unloaded targets measured on ``make run`` itself (or any stack running in development mode).

    ./scripts/run.sh &                     # make run, in another terminal
    python -m tools.bench.live             # 30 orders (after 3 uncounted) to http://127.0.0.1:8000
    python -m tools.bench.live --api http://127.0.0.1:8001 --orders 100

Each order: ``POST /orders`` (202), its confirm as soon as the 202 is in, then
``GET /orders/{id}`` every 5 ms until its ``phase`` is IN_TRANSIT (the time from the POST is
"POST to IN_TRANSIT", the GETs included, as a client watching its order pays for them), the
dealer's ``POST /deliveries/{id}/delivered``, and ``GET /orders/{id}`` until DELIVERED. It
brings its own dealer and city (``POST /dealers``), so the seeded dealers' load does not
matter, and needs a stack with auth off (``AUTH_MODE=dev``, as ``make run`` starts it).

It prints p50 / p99 of each and the targets of the unloaded API (never asserted: a
measurement, noisy on a shared machine); exit status 1 if an order did not end DELIVERED.
"""

import argparse
import asyncio
import sys
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import httpx

from domain.payloads import OrderRequest
from domain.status import OrderStatus, SagaPhase
from tools.bench.api_load import ApiCalls, decide, place_order
from tools.bench.driver import order_request
from tools.bench.stats import Latency

POLL_SECONDS = 0.005
TARGETS_MS = {"POST /orders": 20.0, "confirm": 15.0, "POST /orders to IN_TRANSIT": 150.0}


@dataclass
class Live(ApiCalls):
    """The calls' latencies (seconds) and what went wrong, and each order's time from its
    POST until it was seen IN_TRANSIT."""

    in_transit_seconds: list[float] = field(default_factory=list)

    @property
    def seconds(self) -> dict[str, list[float]]:
        """The latencies of each target, by the target's name (``TARGETS_MS``)."""
        taken = (self.order_seconds, self.confirm_seconds, self.in_transit_seconds)
        return dict(zip(TARGETS_MS, taken, strict=True))


async def _until(
    http: httpx.AsyncClient, order_id: str, done: set[str], within: float
) -> dict[str, Any]:
    """GET the order every POLL_SECONDS until its phase is in ``done``; its view."""
    async with asyncio.timeout(within):
        while True:
            answer = await http.get(f"/orders/{order_id}")
            answer.raise_for_status()
            view: dict[str, Any] = answer.json()
            if view["phase"] in done:
                return view
            await asyncio.sleep(POLL_SECONDS)


async def one_order(
    http: httpx.AsyncClient, request: OrderRequest, index: int, key: str, live: Live
) -> None:
    """Place, confirm and follow one order to DELIVERED, noting its latencies in ``live``."""
    sent = time.perf_counter()
    placed = await place_order(http, live, index, key, request)
    if placed is None or not await decide(http, live, placed, confirm=True):
        return
    order_id = placed.order_id
    moving = {SagaPhase.IN_TRANSIT.value, SagaPhase.DELIVERED.value, SagaPhase.CANCELLED.value}
    view = await _until(http, order_id, moving, within=30)
    if view["phase"] != SagaPhase.IN_TRANSIT.value:
        live.problems.append(f"order {order_id} is {view['phase']}, not IN_TRANSIT")
        return
    live.in_transit_seconds.append(time.perf_counter() - sent)
    reported = await http.post(f"/deliveries/{view['delivery']['delivery_id']}/delivered")
    if reported.status_code != 202:
        live.refused("POST /deliveries/{id}/delivered", reported, f"report of order {order_id}")
        return
    ended = await _until(http, order_id, {SagaPhase.DELIVERED.value}, within=30)
    if ended["status"] != OrderStatus.DELIVERED.value:
        live.problems.append(f"order {order_id} ended {ended['status']}")


async def measure(api: str, orders: int, warmup: int) -> Live:
    """``warmup`` uncounted orders, then ``orders`` measured ones, one at a time."""
    run = uuid.uuid4().hex[:8]
    scratch, live = Live(), Live()
    async with httpx.AsyncClient(base_url=api, timeout=30) as http:
        city = f"Live City {run}"
        dealer = {"name": "Live Dealer", "phone": f"+0 {uuid.uuid4().int % 10**10:010d}"}
        added = await http.post(
            "/dealers", json={**dealer, "province": "Live", "city": city, "capacity": 1}
        )
        added.raise_for_status()
        for index in range(warmup + orders):
            request = order_request(index).model_copy(update={"province": "Live", "city": city})
            taken = live if index >= warmup else scratch
            await one_order(http, request, index, f"live-{run}-{index}", taken)
    live.problems = scratch.problems + live.problems
    return live


def report(live: Live) -> str:
    """The table of p50 / p99 against the targets."""
    lines = [f"{'call':<28} {'count':>5} {'p50 ms':>7} {'p99 ms':>7} {'target p50':>11}  met"]
    for name, taken in live.seconds.items():
        latency = Latency.of(taken)
        target = TARGETS_MS[name]
        met = "yes" if latency.p50_ms < target else "NO"
        lines.append(
            f"{name:<28} {latency.count:>5} {latency.p50_ms:>7.1f} {latency.p99_ms:>7.1f} "
            f"{f'< {target:.0f} ms':>11}  {met}"
        )
    lines += [f"problem: {problem}" for problem in live.problems[:20]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tools.bench.live",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--api", default="http://127.0.0.1:8000", help="the API's base URL")
    parser.add_argument("--orders", type=int, default=30, help="orders measured")
    parser.add_argument("--warmup", type=int, default=3, help="orders first, not counted")
    args = parser.parse_args(argv)
    try:
        live = asyncio.run(measure(args.api, args.orders, args.warmup))
    except (httpx.HTTPError, TimeoutError) as err:
        print(f"live: {type(err).__name__}: {err}", file=sys.stderr)
        return 2
    print(report(live))
    return 1 if live.problems else 0


if __name__ == "__main__":
    sys.exit(main())
