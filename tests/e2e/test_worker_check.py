"""``python worker.py --check``, the worker's health check, against the real stack: it exits 0
when the database, Temporal and NATS it would use all answer, and 1 naming the service that
does not (``nats:``, ``temporal:``) otherwise."""

import asyncio
import os
import sys
from pathlib import Path

from tests.e2e.conftest import Stack
from tools.chaos.stack import free_port

ROOT = Path(__file__).resolve().parents[2]


async def check(stack: Stack, *args: str, within: float = 60, **env: str) -> tuple[int, str]:
    """Run ``worker.py --check *args`` with the stack's settings changed by ``env``; its exit
    code and its output. The stack runs in this event loop, so the check runs beside it."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "worker.py",
        "--check",
        *args,
        cwd=ROOT,
        env={
            **os.environ,
            "DATABASE_URL": stack.settings.database_url_value,
            "TEMPORAL_ADDRESS": stack.settings.temporal_address,
            "NATS_URL": stack.nats.url,
            "AUTH_MODE": "dev",
            **env,
        },
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        async with asyncio.timeout(within):
            output, _ = await process.communicate()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode is not None
    return process.returncode, output.decode(errors="replace")


async def test_the_check_passes_when_every_service_answers(stack: Stack) -> None:
    code, output = await check(stack)
    assert (code, output) == (0, ""), output


async def test_the_events_check_fails_on_a_nats_nobody_listens_on(stack: Stack) -> None:
    closed = f"nats://127.0.0.1:{free_port()}"
    code, output = await check(stack, "--events", NATS_URL=closed)
    assert code == 1, output
    # The cause, as soon as the connection is refused (not "no server answered within 10 s").
    assert "nats: ConnectionRefusedError" in output, output
    assert "temporal:" not in output, output  # --events needs no Temporal


async def test_the_check_fails_on_a_wrong_temporal_address(stack: Stack) -> None:
    code, output = await check(stack, TEMPORAL_ADDRESS=f"127.0.0.1:{free_port()}")
    assert code == 1, output
    assert "temporal:" in output, output
    assert "nats:" not in output, output
