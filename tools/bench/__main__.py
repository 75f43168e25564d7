"""``python -m tools.bench``: the saga measured on a real stack (``make bench``).

    python -m tools.bench                     # default size, under 4 minutes on 2 cores
    python -m tools.bench --sagas 500 --concurrency 100 --phases baseline,saga
    python -m tools.bench --phases http-unloaded,decision --unloaded-orders 100
    python -m tools.bench --phases http --rate 4 --http-seconds 30
    python -m tools.bench --phases saga,http,choreography --style-sagas 300
    python -m tools.bench --database-url postgresql://postgres@127.0.0.1:5432/bench
    python -m tools.bench --poll-rps 20       # the dev server's own queue polls
    python -m tools.bench scale               # many open sagas (``make bench-scale``)
    python -m tools.bench scale --open 3000

Each run starts its own stack in a new folder ``.bench/<timestamp>/`` (logs, the service
database): the Temporal dev server in memory (``--db-file`` for a data file), its history
queues polled 100 times a second (``--poll-rps``; its own default is 20), the saga worker, the
API, and for ``python -m tools.bench`` a worker for the baseline workflow; with the
``choreography`` phase also a NATS server with JetStream (the worker then runs the
choreographed saga's consumers, relay and sweepers too) and a second API that places orders
in the choreographed style (``SAGA_STYLE=choreography``) on its own port.

``python -m tools.bench`` runs these phases, one after the other on the same stack:

- ``baseline``, ``saga``: closed loops through the Temporal client (``--sagas`` each,
  ``--concurrency`` in flight, after ``--warmup`` uncounted), the saga (with the door's
  database work around it: its decision opened, the confirm taken before its signal) against
  a baseline workflow with its round trips and no-op steps (``tools/bench/baseline.py``); the
  two run together in ``--rounds`` rounds, alternating which goes first (baseline, saga,
  saga, baseline), so a machine that drifts during the run weighs on both alike;
- ``history``: one delivered saga and the baseline: events and workflow tasks in each one's
  history;
- ``http-unloaded``: ``--unloaded-orders`` orders through the API, one at a time:
  ``POST /orders``, its confirm at once, and the time to IN_TRANSIT and to DELIVERED;
- ``decision``: the API's confirm (a compare-and-set in the database, then a signal) against a
  Temporal update with a validator on a probe workflow, ``--decisions`` of each, one at a
  time;
- ``saturation``: the saturation rate, ``saturation-orchestration``: a closed loop of
  ``--style-sagas`` through the API (``--concurrency`` in flight, after ``--warmup``
  uncounted), each order placed, confirmed at once and followed to DELIVERED, the dealer
  reporting through the API;
- ``http``: an open loop through the API at ``--rate`` orders/s, by default
  ``--rate-fraction`` (80 %) of the saturation rate of this run (of ``saga``'s, through the
  Temporal client, if ``saturation`` did not run); each order confirmed at once, one in
  ``--cancel-every`` cancelled instead;
- ``choreography``: the choreographed saga against the orchestrated one, on the same stack,
  each through its own API: ``saturation-choreography``, the same closed loop through the
  choreography API (and ``saturation-orchestration`` if the ``saturation`` phase did not
  run), ``http-unloaded-choreography``, the ``http-unloaded`` phase through the choreography
  API, then ``http-choreography``, the ``http`` phase's open loop at the same rate through the
  choreography API.

It prints tables (the phases, the ratios, the HTTP calls, the histories, the decision
mechanisms, the two saga styles side by side, the targets met or not) and writes
``result.json`` (also ``.bench/latest.json``). Its last line is
``bench: <sagas/s> sagas/s, ratio <x> to baseline, p99 <ms> ms``: the saga against the
baseline. When the ``choreography`` phase ran, the line before it is
``bench-choreography: <sagas/s> sagas/s, ratio <x> to orchestration, p99 <ms> ms``: the
closed loop through the choreography API against the one through the orchestration API.

``python -m tools.bench scale`` ends with
``bench-scale: <N> open sagas, worker RSS <MB> MB, confirm p99 <a> ms at 1000 and <b> ms at
<N> (x<b/a>)`` and writes ``.bench/scale-latest.json``.

Progress goes to stderr (``--quiet``: none); exit status 1 if any saga failed, 2 on a usage
error or when the stack would not run, 130 on Ctrl-C.
"""

import argparse
import asyncio
import gc
import signal
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from tools.bench import scale, throughput
from tools.bench.environment import (
    BENCH_DIR,
    DEFAULT_POLL_RPS,
    DEV_SERVER_POLL_RPS,
    BenchError,
    kill_leftovers,
)


class _HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """The module docstring as written, and every option's default."""


def _absolute(text: str) -> Path:
    # The stack's processes run in the repository root, whatever the bench's own cwd.
    return Path(text).resolve()


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--database-url",
        help="PostgreSQL URL of an existing database (its tables are dropped and recreated); "
        "default: a SQLite file in the run folder",
    )
    parser.add_argument(
        "--db-file", type=_absolute, help="Temporal data file (default: Temporal in memory)"
    )
    parser.add_argument(
        "--poll-rps",
        type=_positive_int,
        default=DEFAULT_POLL_RPS,
        help="how many times a second each history queue of the dev server (transfer, timer, "
        f"visibility) may poll: {DEV_SERVER_POLL_RPS} is the dev server's own default, whose "
        "polls move the whole stack in waves 50 ms apart; make run's is 500",
    )
    parser.add_argument(
        "--server-arg",
        action="append",
        default=[],
        help="extra argument for 'temporal server start-dev' (repeatable; write "
        "--server-arg=--flag for one that starts with a dash; the queues' poll rates are "
        "--poll-rps's)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress on stderr")
    parser.add_argument(
        "--out",
        type=_absolute,
        default=BENCH_DIR,
        help="folder of the run folders and of latest.json (default: .bench, gitignored)",
    )


Command = Callable[[argparse.Namespace], Coroutine[Any, Any, int]]


def parse(argv: list[str]) -> tuple[argparse.Namespace, Command]:
    command = "scale" if argv[:1] == ["scale"] else "bench"
    parser = argparse.ArgumentParser(
        prog="python -m tools.bench" + (" scale" if command == "scale" else ""),
        description=__doc__,
        formatter_class=_HelpFormatter,
    )
    _common(parser)
    module = scale if command == "scale" else throughput
    module.add_arguments(parser)
    args = parser.parse_args(argv[1:] if command == "scale" else argv)
    module.validate(parser, args)
    return args, module.run


async def _until_terminated(command: Command, args: argparse.Namespace) -> int:
    # SIGTERM stops the run as Ctrl-C does (asyncio.run turns SIGINT into a cancel of this
    # task): the stack's context managers then stop every child process.
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    return await command(args)


def main(argv: list[str] | None = None) -> int:
    args, command = parse(sys.argv[1:] if argv is None else argv)
    # The bench's own full garbage collections would pause the clock of every call in flight;
    # what it imported stays out of them (the stack's processes do the same: worker.py).
    gc.collect()
    gc.freeze()
    try:
        return asyncio.run(_until_terminated(command, args))
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("bench: interrupted; the stack is stopped", file=sys.stderr)
        return 130
    except BenchError as err:
        print(f"bench: {err}", file=sys.stderr)
        return 2
    finally:
        kill_leftovers()


if __name__ == "__main__":
    sys.exit(main())
