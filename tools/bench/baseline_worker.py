"""``python -m tools.bench.baseline_worker``: the worker process of the baseline workflow.

Polls ``bench-baseline`` (the workflow) and ``bench-baseline-activities`` (the no-op activities),
on the Temporal server named by ``TEMPORAL_ADDRESS``, until SIGTERM or SIGINT. It runs
workflows in the same sandbox configuration as the saga's worker, so the two compare like for
like: its workflows' modules (``tools.bench``) are imported once per process, as the saga
worker's ``workflows`` are, not again for every run.
"""

import asyncio
import contextlib
import gc
import logging
import signal
from concurrent.futures import ThreadPoolExecutor

from temporalio.worker import Worker

from sagas.temporal import connect_temporal
from settings import Settings
from tools.bench.baseline import (
    BASELINE_ACTIVITY_TASK_QUEUE,
    BASELINE_TASK_QUEUE,
    BaselineWorkflow,
    noop,
)
from worker import workflow_runner


async def serve(settings: Settings) -> None:
    """Run both baseline workers until SIGTERM/SIGINT."""
    client = await connect_temporal(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    threads = settings.activity_threads  # the saga worker's thread pool size
    with ThreadPoolExecutor(threads, thread_name_prefix="activity") as executor:
        async with contextlib.AsyncExitStack() as stack:
            # Configured as the saga's workflow worker is (worker.workflow_worker): workflows
            # only, their steps on the activity queue.
            await stack.enter_async_context(
                Worker(
                    client,
                    task_queue=BASELINE_TASK_QUEUE,
                    workflows=[BaselineWorkflow],
                    workflow_runner=workflow_runner("tools.bench"),
                )
            )
            await stack.enter_async_context(
                Worker(
                    client,
                    task_queue=BASELINE_ACTIVITY_TASK_QUEUE,
                    activities=[noop],
                    activity_executor=executor,
                    max_concurrent_activities=threads,
                )
            )
            gc.collect()  # as the saga's worker does (worker.py)
            gc.freeze()
            await stop.wait()


def main() -> None:
    settings = Settings()
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    asyncio.run(serve(settings))


if __name__ == "__main__":
    main()
