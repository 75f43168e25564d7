"""``make run`` (scripts/run.sh) as someone at a terminal uses it.

The real script on free ports and a fresh data directory: it brings the system up, starts a
part again after it is killed (kill -9 of the worker), says so on the terminal, and Ctrl-C
stops every process it ever started and exits 0.
"""

import asyncio
import contextlib
import os
import re
import signal
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from settings import Settings

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
VENV = Path(sys.executable).parent.parent
ANSI = re.compile(r"\x1b\[[0-9;]*m")
WORKER_RESTARTED = re.compile(
    r"^\[run\] worker exited \(status 137\); restarting in \d+s \(restart 1\)$"
)
AUTH_OFF = "[run] auth is off (AUTH_MODE=dev)"
STOPPED = "[run] stopped. Data kept in"


def free_ports(count: int) -> list[int]:
    """Ports free right now, all different (every socket stays bound until all are picked)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def run_env(data_dir: Path) -> dict[str, str]:
    """This environment without anything that would point the run elsewhere (CI's
    ``DATABASE_URL``, a ``TEMPORAL_ADDRESS``, credentials...), on free ports."""
    own = {name.upper() for name in Settings.model_fields}
    own |= {"DATA_DIR", "VENV", "HOST", "API_PORT", "TEMPORAL_PORT", "TEMPORAL_UI_PORT"}
    env = {k: v for k, v in os.environ.items() if k not in own}
    temporal_port, ui_port, api_port = free_ports(3)
    return env | {
        "DATA_DIR": str(data_dir),
        "VENV": str(VENV),
        "HOST": "127.0.0.1",
        "TEMPORAL_PORT": str(temporal_port),
        "TEMPORAL_UI_PORT": str(ui_port),
        "API_PORT": str(api_port),
        "DATABASE_URL": f"sqlite:///{data_dir / 'orders.db'}",
    }


def alive(pid: int) -> bool:
    """Running (a zombie waiting for its parent to reap it is not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def is_worker(pid: int) -> bool:
    return b"worker.py" in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")


def polling(worker_log: Path) -> int:
    """How many times a worker said it is polling its task queues (once per start)."""
    try:
        return worker_log.read_text().count("worker polling")
    except FileNotFoundError:
        return 0


def processes_of_run(data_dir: Path) -> set[int]:
    """Every live process with this run's ``DATA_DIR`` in its environment: the script and
    whatever it started (all of them inherit it), whatever their session or parent now."""
    marker = f"DATA_DIR={data_dir}".encode()
    found = set()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            environ = (proc / "environ").read_bytes().split(b"\0")
        except OSError:  # gone, or not ours
            continue
        if marker in environ and alive(int(proc.name)):
            found.add(int(proc.name))
    return found


def read_pids(data_dir: Path) -> dict[str, int]:
    """run.pids: one ``<pid> <name>`` line per running part."""
    try:
        lines = (data_dir / "run.pids").read_text().splitlines()
    except FileNotFoundError:
        return {}
    pids = {}
    for line in lines:
        pid, _, name = line.partition(" ")
        if name:
            pids[name] = int(pid)
    return pids


async def until(what: str, check: Callable[[], bool], within: float, output: list[str]) -> None:
    """Poll ``check`` until it holds (deadline, not a fixed sleep); fail with the run's output."""
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {within}s. run.sh printed:\n" + "\n".join(output))
        await asyncio.sleep(0.1)


# bash as at a terminal, with SIGINT not ignored: this test may run under a shell that ignores
# it (a background job of a non-interactive shell), and bash cannot trap a signal ignored at
# entry. Reset, then exec (same pid); no preexec_fn, which is unsafe with threads around.
RUN_SH = (
    "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
    "os.execvp('bash', ['bash', sys.argv[1]])"
)


async def test_make_run_restarts_a_killed_worker_and_ctrl_c_stops_everything(tmp_path: Path):
    env = run_env(tmp_path)
    output: list[str] = []
    run = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        RUN_SH,
        str(ROOT / "scripts" / "run.sh"),
        cwd=ROOT,
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        # Its own process group, as at a terminal: Ctrl-C is SIGINT to the whole group.
        start_new_session=True,
    )

    async def read_output() -> None:
        assert run.stdout is not None
        async for line in run.stdout:
            output.append(ANSI.sub("", line.decode(errors="replace").rstrip()))

    reading = asyncio.create_task(read_output())
    started: set[int] = set()  # every part's pid, including restarts
    healthz = f"http://127.0.0.1:{env['API_PORT']}/healthz"
    try:
        async with httpx.AsyncClient(timeout=1) as http:
            deadline = time.monotonic() + 45
            while True:
                assert run.returncode is None, "run.sh exited:\n" + "\n".join(output)
                try:
                    if (await http.get(healthz)).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                assert time.monotonic() < deadline, "no /healthz:\n" + "\n".join(output)
                await asyncio.sleep(0.1)

        # A worker that is up and polling, as one that crashes in use would be.
        worker_log = tmp_path / "logs" / "worker.log"
        await until("the worker polling", lambda: polling(worker_log) == 1, 20, output)
        pids = read_pids(tmp_path)
        assert set(pids) == {"temporal", "worker", "api"}, pids
        assert all(alive(pid) for pid in pids.values()), pids
        started |= set(pids.values())
        worker = pids["worker"]
        assert is_worker(worker)

        os.kill(worker, signal.SIGKILL)

        def restarted() -> bool:
            new = read_pids(tmp_path).get("worker")
            return new is not None and new != worker and alive(new)

        await until("a new worker", restarted, 15, output)
        new_worker = read_pids(tmp_path)["worker"]
        started.add(new_worker)
        assert not alive(worker)
        assert is_worker(new_worker)
        assert read_pids(tmp_path)["api"] == pids["api"]  # the others were left alone
        assert read_pids(tmp_path)["temporal"] == pids["temporal"]
        await until("the restart line", lambda: any(map(WORKER_RESTARTED.match, output)), 5, output)
        # The new worker really runs: it connected to Temporal and polls.
        await until("the new worker polling", lambda: polling(worker_log) == 2, 20, output)
        assert alive(new_worker)

        os.killpg(run.pid, signal.SIGINT)  # Ctrl-C
        assert await asyncio.wait_for(run.wait(), 30) == 0, "\n".join(output)
        await reading
        assert [pid for pid in started if alive(pid)] == []
        assert processes_of_run(tmp_path) == set()
        assert not (tmp_path / "run.pids").exists()
        assert any(line.startswith(STOPPED) for line in output), output
        assert sum(line.startswith(AUTH_OFF) for line in output) == 1, output
        assert sum(bool(WORKER_RESTARTED.match(line)) for line in output) == 1, output
    finally:
        # Whatever failed above: no Temporal server (or anything else) outlives the test.
        if run.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(run.pid, signal.SIGKILL)
            await run.wait()
        for pid in processes_of_run(tmp_path):  # ours only, whatever reused a pid since
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        reading.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reading
