"""Fixtures of the choreography tests."""

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.nats_server import NatsServer


@pytest.fixture
def server(tmp_path: Path) -> Iterator[NatsServer]:
    """A ``nats-server -js`` of the test's own, stopped afterwards."""
    nats_server = NatsServer(tmp_path / "nats")
    nats_server.start()
    yield nats_server
    nats_server.stop()
