"""The ``decision`` phase: the two ways to take the customer's payment decision, measured
side by side on an idle stack.

- **API confirm** (what the door does): ``POST /payments/{id}/confirm``: a compare-and-set
  in the database, then one signal. It needs no worker to answer (the saga takes the
  decision when it next runs). Measured on a fresh order once its saga waits for the decision
  (its payment written), so that nothing else runs meanwhile; the confirm sent right after
  the 202, while the saga's first steps run, is the ``http-unloaded`` phase's.
- **Temporal update**: ``execute_update`` of ``decide`` on a
  :class:`~tools.bench.decision_probe.DecisionProbeWorkflow`, from the bench's Temporal
  client: the server hands the update to the worker in a workflow task, the validator accepts
  it, the handler runs, the task completes, then the client gets the answer. It needs a
  running, free worker to answer at all. Measured on a probe waiting for it (its first
  workflow task done), like for like with the confirm; and on a probe just started (sent
  as soon as the start returns), as a customer confirming right after the 202 would send it.

For reference it also times that probe's ``start_workflow``: one durable RPC to the server, the
heart of ``POST /orders`` (and of the confirm's signal, a write of the same kind).

One at a time, interleaved (the two updates, then an order confirmed and followed to
DELIVERED before the next round), after two uncounted rounds. The updates go from the bench's
client without HTTP; through the API they would cost an HTTP hop more.
"""

import asyncio
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx
from temporalio.client import WorkflowHandle

from domain.status import OrderStatus
from tools.bench.api_load import ApiCalls, decide, place_order
from tools.bench.baseline import BASELINE_TASK_QUEUE
from tools.bench.decision_probe import DecisionProbeWorkflow
from tools.bench.environment import BenchStack
from tools.bench.unloaded import POLL_SECONDS, until_payment_exists, watch_order

WARMUP_ROUNDS = 2
# Started, workflow task scheduled, started, completed: the probe waits for its update.
PROBE_WAITING_EVENTS = 4

ProbeHandle = WorkflowHandle[DecisionProbeWorkflow, str]


@dataclass
class Decisions(ApiCalls):
    """What the phase measured (latencies in seconds, as taken); ``confirm_seconds``: the
    API confirms."""

    update_seconds: list[float] = field(default_factory=list)  # probe waiting
    fresh_update_seconds: list[float] = field(default_factory=list)  # probe just started
    start_seconds: list[float] = field(default_factory=list)  # that probe's start_workflow


async def compare_decisions(
    bench: BenchStack,
    http: httpx.AsyncClient,
    *,
    samples: int,
    tag: str,
    within: float,
    on_sample: Callable[[], None] = lambda: None,
) -> Decisions:
    """``samples`` rounds (an update on a waiting probe, one on a fresh probe, an API confirm)
    after WARMUP_ROUNDS uncounted ones; each order followed to DELIVERED (at most ``within``
    seconds)."""
    scratch, result = Decisions(), Decisions()
    for index in range(WARMUP_ROUNDS + samples):
        measured = index >= WARMUP_ROUNDS
        run = result if measured else scratch
        try:
            async with asyncio.timeout(within):
                handle = await _start_probe(bench)
                await _until_waiting(handle)
                await _update(handle, run, run.update_seconds)
                started = time.perf_counter()
                fresh = await _start_probe(bench)
                run.start_seconds.append(time.perf_counter() - started)
                await _update(fresh, run, run.fresh_update_seconds)
            await _confirm_once(bench, http, run, index, f"{tag}-{index}", within)
        except TimeoutError:
            run.problems.append(f"round {index} did not end within {within:.0f}s")
        except httpx.HTTPError as err:
            run.non_2xx[type(err).__name__] += 1
            run.problems.append(f"round {index}: {type(err).__name__}: {err}")
        finally:
            if measured:
                on_sample()
    result.problems = scratch.problems + result.problems
    result.non_2xx.update(scratch.non_2xx)
    return result


async def _start_probe(bench: BenchStack) -> ProbeHandle:
    return await bench.client.start_workflow(
        DecisionProbeWorkflow.run, id=f"bench-probe-{uuid.uuid4()}", task_queue=BASELINE_TASK_QUEUE
    )


async def _until_waiting(handle: ProbeHandle) -> None:
    """Poll the probe's history length until its first workflow task is done."""
    while True:
        if (await handle.describe()).history_length >= PROBE_WAITING_EVENTS:
            return
        await asyncio.sleep(POLL_SECONDS)


async def _update(handle: ProbeHandle, run: Decisions, into: list[float]) -> None:
    """Time the probe's update, then check it took the decision and ended with it."""
    started = time.perf_counter()
    answer = await handle.execute_update(DecisionProbeWorkflow.decide, "confirm")
    into.append(time.perf_counter() - started)
    ended = await handle.result()
    if (answer, ended) != ("confirm", "confirm"):
        run.problems.append(f"probe {handle.id}: update answered {answer!r}, ended {ended!r}")


async def _confirm_once(
    bench: BenchStack, http: httpx.AsyncClient, run: Decisions, index: int, key: str, within: float
) -> None:
    """Place an order, confirm it (timed) once its saga waits for the decision, follow it to
    DELIVERED."""
    placed = await place_order(http, run, index, key)
    if placed is None:
        return
    await until_payment_exists(bench, placed.payment_id, within)
    if not await decide(http, run, placed, confirm=True):
        return
    ended = await watch_order(bench, placed.order_id, within)
    if ended.status != OrderStatus.DELIVERED.value:
        run.problems.append(f"order {placed.order_id} ended {ended.status}, not DELIVERED")
