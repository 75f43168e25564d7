"""``python -m tools.bench``: the saga measured on a real stack (``make bench``).

    python -m tools.bench                          # baseline, saga, history, styles
    python -m tools.bench --sagas 500 --concurrency 100 --phases baseline,saga
    python -m tools.bench --database-url postgresql://postgres@127.0.0.1:5432/bench
    python -m tools.bench scale                    # 1,000 then 10,000 open sagas
    python -m tools.bench scale --open 1000,3000

Each run starts its own stack in a new folder ``.bench/<timestamp>/`` (logs, the SQLite
database unless ``--database-url``): the Temporal dev server in memory, its history queues
polled ``--poll-rps`` times a second, the saga worker, the API, a worker for the baseline
workflow, and for the ``styles`` phase a NATS server and a second API placing orders in the
choreographed style.

Phases: ``baseline`` and ``saga`` (closed loops, ``--sagas`` each, ``--concurrency`` in
flight, after ``--warmup`` uncounted, in ``--rounds`` alternating rounds: the baseline
workflow through the Temporal client, the orchestrated saga through the door),
``history`` (one of each, its history counted), ``styles`` (the same closed loop through each
style's API, ``--style-sagas`` each, the dealer reporting over HTTP).

It prints the tables, writes ``result.json`` (copied to ``.bench/latest.json``) and ends
with ``bench-choreography: <sagas/s> sagas/s, ratio <x> to orchestration, p99 <ms> ms`` (when
``styles`` ran) and ``bench: <sagas/s> sagas/s, ratio <x> to baseline, p99 <ms> ms``. The
scale run ends with ``bench-scale: ...`` and writes ``.bench/scale-latest.json``. Exit
status 1 if any saga failed, 2 on a usage error or a stack that would not run, 130 on Ctrl-C.
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
from tools.bench.environment import BENCH_DIR, DEFAULT_POLL_RPS, BenchError, kill_leftovers

Command = Callable[[argparse.Namespace], Coroutine[Any, Any, int]]


class _HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """The module docstring as written, and every option's default."""


def _positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"not a positive whole number: {text!r}")
    return int(text)


def parse(argv: list[str]) -> tuple[argparse.Namespace, Command]:
    is_scale = argv[:1] == ["scale"]
    parser = argparse.ArgumentParser(
        prog="python -m tools.bench" + (" scale" if is_scale else ""),
        description=__doc__,
        formatter_class=_HelpFormatter,
    )
    parser.add_argument(
        "--database-url",
        help="PostgreSQL URL of a database whose tables are dropped and recreated "
        "(default: SQLite in the run folder)",
    )
    parser.add_argument(
        "--poll-rps",
        type=_positive_int,
        default=DEFAULT_POLL_RPS,
        help="polls a second of each history queue of the dev server (its own default: 20)",
    )
    parser.add_argument(
        "--server-config",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="more dynamic config of the dev server (repeatable), e.g. history.cacheMaxSize=20000",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress on stderr")
    parser.add_argument(
        "--out", type=lambda p: Path(p).resolve(), default=BENCH_DIR, help="run folders' folder"
    )
    module = scale if is_scale else throughput
    module.add_arguments(parser)
    args = parser.parse_args(argv[1:] if is_scale else argv)
    module.validate(parser, args)
    return args, module.run


async def _until_terminated(command: Command, args: argparse.Namespace) -> int:
    # SIGTERM stops the run as Ctrl-C does: the stack's context managers stop every child.
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    return await command(args)


def main(argv: list[str] | None = None) -> int:
    args, command = parse(sys.argv[1:] if argv is None else argv)
    # The bench's own full collections would pause every call in flight (as worker.py does).
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
