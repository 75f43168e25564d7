"""The processes of the chaos run: Temporal dev server, worker (supervised), API, and for
the choreographed saga a NATS server with JetStream.

The benchmark (``python -m tools.bench``) runs the same stack with a few options changed: Temporal
in memory, extra server flags and environment, no fault points, no worker supervision.
"""

import asyncio
import contextlib
import os
import random
import signal
import socket
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx

BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parents[2]


# Ports handed to a child process come from below the kernel's ephemeral range (where a bind
# to port 0 lands; 32768-60999 by default). The Temporal dev server picks the ports of its
# internal services that way, before its frontend binds the port we gave it, and once picked
# that very port for its worker service: the server died at startup ("address already in
# use"). A port outside that range is never one of its picks.
_PORTS = range(20000, 32768)
_pick = random.Random()  # its own generator: a chaos run seeds the global one
_handed_out: set[int] = set()  # never the same port twice from one process


def free_port() -> int:
    """A port free right now on 127.0.0.1, outside the ephemeral range, and not handed out
    by this process before."""
    high = min(_ephemeral_low(), _PORTS.stop)
    low = _PORTS.start if high > _PORTS.start else 1024  # a lowered ephemeral range
    for _ in range(1000):
        port = _pick.randrange(low, high)
        if port in _handed_out:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise RuntimeError(f"no free port in {low}-{high - 1}")


def _ephemeral_low() -> int:
    """The first port of the kernel's ephemeral range (Linux), or 32768."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


@dataclass
class Proc:
    """One child process, restartable, with its output appended to a log file."""

    name: str
    argv: list[str]
    env: dict[str, str]
    log: Path
    process: asyncio.subprocess.Process | None = None
    starts: int = 0

    async def start(self) -> None:
        with self.log.open("ab") as out:
            self.process = await asyncio.create_subprocess_exec(
                *self.argv, env=self.env, cwd=ROOT, stdout=out, stderr=out, start_new_session=True
            )
        self.starts += 1

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.returncode is None

    async def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.process is None or self.process.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, sig)
        try:
            await asyncio.wait_for(self.process.wait(), 30)
        except TimeoutError:
            os.killpg(self.process.pid, signal.SIGKILL)
            await self.process.wait()

    async def stop(self) -> None:
        await self.kill(signal.SIGTERM)


@dataclass
class Stack:
    """Temporal + worker + API for one chaos run, all on loopback.

    The defaults are the chaos run's. Optional knobs (used by the benchmark):

    - ``temporal_in_memory``: no data file, Temporal loses everything when it stops (a
      restart then starts empty); otherwise ``temporal_db_file`` (default
      ``data_dir/temporal.db``) in WAL mode.
    - ``server_args``: extra flags for ``temporal server start-dev``, appended as given
      (e.g. ``--dynamic-config-value KEY=VALUE``).
    - ``extra_env``: environment of the worker and the API, on top of (and overriding) the
      stack's own variables.
    - ``fault_injection``: False leaves ``CHAOS_FAULT_DIR`` unset, so fault points are no-ops.
    - ``supervise_worker``: False does not restart a worker that died.

    Optional knob of the orchestration run (unset by default):

    - ``activity_routing``: exported as ``ACTIVITY_ROUTING`` (where new orchestrated sagas
      run their steps); unset, the processes read the environment's or the settings' default.

    Optional knobs of the choreography run (off by default):

    - ``nats``: also run ``nats-server`` with JetStream on ``nats_port``, its store in
      ``data_dir/nats``, and export ``NATS_URL`` to the worker and the API.
    - ``saga_style``: exported as ``SAGA_STYLE`` (the style the API places new orders in).
    - ``api_fault_dir``: the API's own fault point folder (``CHAOS_FAULT_DIR`` of the API
      process only), so a point armed there kills the API and not the worker.
    - ``supervise_api``: restart an API that died, as the worker is.
    """

    data_dir: Path
    database_url: str
    payment_window: float
    dealer_window: float
    temporal_port: int = field(default_factory=free_port)
    api_port: int = field(default_factory=free_port)
    temporal_in_memory: bool = False
    temporal_db_file: Path | None = None
    server_args: Sequence[str] = ()
    extra_env: Mapping[str, str] = field(default_factory=dict)
    fault_injection: bool = True
    supervise_worker: bool = True
    nats: bool = False
    nats_port: int = field(default_factory=free_port)
    saga_style: str | None = None
    activity_routing: str | None = None
    api_fault_dir: Path | None = None
    supervise_api: bool = False
    fault_dir: Path = field(init=False)
    env: dict[str, str] = field(init=False)
    temporal: Proc = field(init=False)
    worker: Proc = field(init=False)
    api: Proc = field(init=False)
    broker: Proc | None = field(init=False, default=None)
    worker_deaths: int = 0
    api_deaths: int = 0
    _supervising: bool = False
    _supervisor: asyncio.Task[None] | None = None
    _api_supervisor: asyncio.Task[None] | None = None

    def __post_init__(self) -> None:
        """Lay out the run folder and set up the three processes (none started yet)."""
        self.fault_dir = self.data_dir / "faults"
        logs = self._make_folders()
        self.env = self._environment()
        self.temporal = Proc("temporal", self._temporal_argv(), self.env, logs / "temporal.log")
        self.worker = Proc("worker", [sys.executable, "worker.py"], self.env, logs / "worker.log")
        self.api = Proc("api", self._api_argv(), self._api_environment(), logs / "api.log")
        if self.nats:
            self.broker = Proc("nats", self._nats_argv(), self.env, logs / "nats.log")

    def _make_folders(self) -> Path:
        """Create the run folder, its fault point folder if armed, and its logs folder."""
        if self.fault_injection:
            self.fault_dir.mkdir(parents=True, exist_ok=True)
        else:
            self.data_dir.mkdir(parents=True, exist_ok=True)
        logs = self.data_dir / "logs"
        logs.mkdir(exist_ok=True)
        return logs

    def _environment(self) -> dict[str, str]:
        """The environment of the worker and the API: ours, the stack's settings, extra_env."""
        env = {
            **os.environ,
            "DATABASE_URL": self.database_url,
            "TEMPORAL_ADDRESS": self.temporal_address,
            "PAYMENT_WINDOW_SECONDS": str(self.payment_window),
            "DEALER_ASSIGNMENT_WINDOW_SECONDS": str(self.dealer_window),
            "DEALER_RETRY_INITIAL_SECONDS": "0.5",
            "ORDER_CREATE_WAIT_SECONDS": "10",
            "CHAOS_FAULT_DIR": str(self.fault_dir),
            "LOG_LEVEL": "WARNING",
            # A rig on loopback that plays every customer and the shop at once: no credentials
            # (tests/e2e/test_auth.py covers them).
            "AUTH_MODE": "dev",
        }
        if not self.fault_injection:
            del env["CHAOS_FAULT_DIR"]  # an inherited one too: fault points stay no-ops
        if self.nats:
            env["NATS_URL"] = self.nats_url
        if self.saga_style is not None:
            env["SAGA_STYLE"] = self.saga_style
        if self.activity_routing is not None:
            env["ACTIVITY_ROUTING"] = self.activity_routing
        env.update(self.extra_env)
        return env

    def _api_environment(self) -> dict[str, str]:
        """The worker's environment, with the API's own fault point folder if it has one."""
        if self.api_fault_dir is None or not self.fault_injection:
            return self.env
        self.api_fault_dir.mkdir(parents=True, exist_ok=True)
        return {**self.env, "CHAOS_FAULT_DIR": str(self.api_fault_dir)}

    def _nats_argv(self) -> list[str]:
        """``nats-server`` with JetStream on our port, its store in the run folder."""
        port, store = str(self.nats_port), str(self.data_dir / "nats")
        return [str(BIN / "nats-server"), "-a", "127.0.0.1", "-p", port, "-js", "-sd", store]

    def _temporal_argv(self) -> list[str]:
        """``temporal server start-dev`` on our port, in memory or on its data file."""
        if self.temporal_in_memory:
            persistence: list[str] = []
        else:
            persistence = [
                "--db-filename",
                str(self.temporal_db_file or self.data_dir / "temporal.db"),
                "--sqlite-pragma",
                "journal_mode=wal",
                "--sqlite-pragma",
                "synchronous=normal",
            ]
        return [
            str(BIN / "temporal"),
            "server",
            "start-dev",
            "--headless",
            "--ip",
            "127.0.0.1",
            "--port",
            str(self.temporal_port),
            *persistence,
            "--search-attribute",
            "OrderStatus=Keyword",
            "--log-level",
            "error",
            *self.server_args,
        ]

    def _api_argv(self) -> list[str]:
        """uvicorn serving the API's app factory on our port."""
        return [
            str(BIN / "uvicorn"),
            "api.app:create_app",
            "--factory",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.api_port),
            "--log-level",
            "warning",
        ]

    @property
    def temporal_address(self) -> str:
        return f"127.0.0.1:{self.temporal_port}"

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def nats_url(self) -> str:
        return f"nats://127.0.0.1:{self.nats_port}"

    async def start(self) -> None:
        await self.start_temporal()
        if self.broker is not None:
            await self.start_broker()
        await self.worker.start()
        await self.api.start()
        await self._wait_http(f"{self.api_url}/healthz", 60)
        if self.supervise_worker:
            self._supervising = True
            self._supervisor = asyncio.create_task(self._supervise_worker())
        if self.supervise_api:
            self._supervising = True
            self._api_supervisor = asyncio.create_task(self._supervise_api())

    async def start_temporal(self) -> None:
        await self.temporal.start()
        await self._wait_tcp(self.temporal_port, 60)

    async def restart_temporal(self, sig: int) -> None:
        await self.temporal.kill(sig)
        await self.start_temporal()

    async def start_broker(self) -> None:
        assert self.broker is not None, "the stack runs no NATS server (nats=False)"
        await self.broker.start()
        await self._wait_tcp(self.nats_port, 60)

    async def restart_broker(self, sig: int) -> None:
        """Stop the NATS server with ``sig`` and start it again: same port, same store."""
        assert self.broker is not None, "the stack runs no NATS server (nats=False)"
        await self.broker.kill(sig)
        await self.start_broker()

    async def kill_worker(self) -> None:
        """SIGKILL the worker now; the supervisor brings it back."""
        await self.worker.kill(signal.SIGKILL)

    async def _supervise_worker(self) -> None:
        # A crashed worker comes back, like under systemd or Kubernetes.
        while self._supervising:
            if self.worker.process is not None:
                await self.worker.process.wait()
                if not self._supervising:
                    return
                self.worker_deaths += 1
            await asyncio.sleep(0.5)
            await self.worker.start()

    async def _supervise_api(self) -> None:
        # An API killed at a fault point comes back on its port; its clients retry meanwhile.
        while self._supervising:
            if self.api.process is not None:
                await self.api.process.wait()
                if not self._supervising:
                    return
                self.api_deaths += 1
            await asyncio.sleep(0.5)
            await self.api.start()

    async def stop(self) -> None:
        self._supervising = False
        for supervisor in (self._supervisor, self._api_supervisor):
            if supervisor is not None:
                supervisor.cancel()
        for proc in (self.api, self.worker, self.broker, self.temporal):
            if proc is not None:
                await proc.stop()

    @staticmethod
    async def _wait_tcp(port: int, seconds: float) -> None:
        async with asyncio.timeout(seconds):
            while True:
                try:
                    _, writer = await asyncio.open_connection("127.0.0.1", port)
                    writer.close()
                    return
                except OSError:
                    await asyncio.sleep(0.1)

    @staticmethod
    async def _wait_http(url: str, seconds: float) -> None:
        async with asyncio.timeout(seconds), httpx.AsyncClient() as http:
            while True:
                try:
                    if (await http.get(url)).status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
                await asyncio.sleep(0.1)
