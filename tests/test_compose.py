"""docker-compose.yml, the production topology: no secret has a default, auth is on, the Web UI
is private and read-only, the migration job adds no demo data, Temporal TLS is passed through.

The file is parsed with PyYAML (no Docker engine). When `docker-compose` is on PATH it also
renders the file: with the required secrets, and without each of them.
"""

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml  # type: ignore[import-untyped]

COMPOSE_FILE = Path(__file__).resolve().parents[1] / "docker-compose.yml"
RAW = COMPOSE_FILE.read_text()
# The file without its comment lines, which name the settings to document them.
BODY = "\n".join(line for line in RAW.splitlines() if not line.lstrip().startswith("#"))
SERVICES: dict[str, dict[str, Any]] = yaml.safe_load(RAW)["services"]
# The services built from the project's Dockerfile: the API, the workers, the migration job.
APP_SERVICES = sorted(name for name, service in SERVICES.items() if "build" in service)

SECRETS = {
    "ORDERS_DB_PASSWORD": "ci",
    "TEMPORAL_DB_PASSWORD": "ci",
    "OPERATOR_API_KEYS": "ci-operator-key-0123456789",
    "CUSTOMER_TOKEN_SECRETS": "ci-customer-token-secret-0123456789abcdef",
}
REMOVED_SETTINGS = ("API_KEYS", "CUSTOMER_TOKEN_SECRET")
TEMPORAL_PASS_THROUGH = (
    "TEMPORAL_API_KEY",
    "TEMPORAL_TLS",
    "TEMPORAL_TLS_CA",
    "TEMPORAL_TLS_CERT",
    "TEMPORAL_TLS_KEY",
)
# The one service meant to be reached from other hosts.
PUBLIC_SERVICES = {"api"}
LOOPBACK = {"127.0.0.1", "::1", "[::1]"}


def environment(service: dict[str, Any]) -> dict[str, Any]:
    """A service's environment as a mapping, from either Compose form (mapping or list)."""
    env = service.get("environment") or {}
    if isinstance(env, dict):
        return env
    return dict(entry.split("=", 1) if "=" in entry else (entry, None) for entry in env)


def resolve(text: str) -> str:
    """``${VAR:-default}`` as its default, any other ``${VAR...}`` as ``x`` (for ports)."""
    return re.sub(
        r"\$\{\w+(?::?-([^}]*)|[^}]*)\}",
        lambda m: m.group(1) if m.group(1) is not None else "x",
        text,
    )


def published_host_ips(service: dict[str, Any]) -> list[str | None]:
    """The host address of each port the service publishes; None is every interface."""
    ips: list[str | None] = []
    for port in service.get("ports") or []:
        if isinstance(port, dict):  # long syntax
            ips.append(port.get("host_ip"))
            continue
        # Short syntax: [[HOST_IP:]HOST_PORT:]CONTAINER_PORT[/PROTOCOL]
        parts = resolve(str(port)).split("/", 1)[0].rsplit(":", 2)
        ips.append(parts[0] if len(parts) == 3 else None)
    return ips


def test_the_services_are_found():
    assert {"api", "migrate", "temporal-ui"} <= set(SERVICES)
    assert {"api", "migrate"} <= set(APP_SERVICES)
    assert any(name.startswith("worker-") for name in APP_SERVICES)


def test_the_web_ui_is_published_on_loopback_only_and_read_only():
    ui = SERVICES["temporal-ui"]
    ips = published_host_ips(ui)
    assert ips, "the Web UI publishes no port"
    assert set(ips) == {"127.0.0.1"}, f"the Web UI is published on {ips}, not 127.0.0.1 only"
    assert environment(ui).get("TEMPORAL_DISABLE_WRITE_ACTIONS") == "true"


def test_no_service_but_the_api_is_published_on_every_interface():
    assert published_host_ips(SERVICES["api"]), "the API publishes no port"
    exposed = {
        name: published_host_ips(service)
        for name, service in SERVICES.items()
        if name not in PUBLIC_SERVICES
        and (
            service.get("network_mode") == "host"
            or any(ip not in LOOPBACK for ip in published_host_ips(service))
        )
    }
    assert exposed == {}, f"published beyond this host's loopback: {exposed}"


def test_the_migrate_job_migrates_the_schema_only():
    assert SERVICES["migrate"]["command"] == ["python", "-m", "store", "init"]
    seeding = [
        name
        for name, service in SERVICES.items()
        if re.search(r"store\W+seed", str(service.get("command", "")))
    ]
    assert seeding == [], f"demo dealers are seeded by {seeding} (only `make run` seeds)"


@pytest.mark.parametrize("name", SECRETS)
def test_a_secret_is_required_wherever_it_is_used(name):
    references = re.findall(rf"\$\{{?{name}\b.{{0,2}}", BODY)
    assert references, f"{name} is not used"
    optional = [ref for ref in references if ref != f"${{{name}:?"]
    assert optional == [], f"{name} used without `${{{name}:?...}}`: {optional}"
    messages = re.findall(rf"\$\{{{name}:\?([^}}]*)\}}", BODY)
    assert all(name in message for message in messages), f"unclear messages: {messages}"
    # Not passed through (`NAME:` with no value), which would make it optional again.
    for service_name, service in SERVICES.items():
        value = environment(service).get(name, f"${{{name}:?")
        assert isinstance(value, str), f"{service_name} passes {name} through without requiring it"
        assert f"${{{name}:?" in value, f"{service_name}: {name}={value!r}"


def test_the_removed_auth_settings_are_gone():
    for name in REMOVED_SETTINGS:
        assert not re.search(rf"(?<![\w$]){name}\b", BODY), f"{name} is still in the file"


def test_the_app_passes_the_temporal_connection_settings_through():
    for name in APP_SERVICES:
        env = environment(SERVICES[name])
        assert env.get("TEMPORAL_ADDRESS") == "${TEMPORAL_ADDRESS:-temporal:7233}", name
        missing = [key for key in TEMPORAL_PASS_THROUGH if key not in env]
        assert missing == [], f"{name} does not pass {missing} through"
        set_here = {key: env[key] for key in TEMPORAL_PASS_THROUGH if env[key] is not None}
        assert set_here == {}, f"{name} sets instead of passing through: {set_here}"


def test_auth_is_required_and_never_dev():
    for name in APP_SERVICES:
        assert environment(SERVICES[name]).get("AUTH_MODE") == "required", name
    modes = {
        name: environment(service)["AUTH_MODE"]
        for name, service in SERVICES.items()
        if "AUTH_MODE" in environment(service)
    }
    assert all(mode == "required" for mode in modes.values()), modes
    assert not re.search(r"AUTH_MODE\W+(\$\{AUTH_MODE\W+)?dev\b", BODY, re.IGNORECASE)


# ---------------------------------------------------------------- rendered by docker-compose

DOCKER_COMPOSE = shutil.which("docker-compose")
needs_docker_compose = pytest.mark.skipif(
    DOCKER_COMPOSE is None, reason="docker-compose is not installed"
)


def render(tmp_path: Path, secrets: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """``docker-compose config`` with exactly these secrets: none from the shell or a .env."""
    assert DOCKER_COMPOSE is not None
    empty_env_file = tmp_path / "empty.env"
    empty_env_file.touch()
    env = {key: value for key, value in os.environ.items() if key not in SECRETS}
    env = {key: value for key, value in env.items() if not key.startswith("COMPOSE_")}
    return subprocess.run(
        [DOCKER_COMPOSE, "-f", str(COMPOSE_FILE), "--env-file", str(empty_env_file), "config"],
        env={**env, **secrets},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@needs_docker_compose
def test_docker_compose_renders_it_with_the_secrets(tmp_path):
    rendered = render(tmp_path, SECRETS)
    assert rendered.returncode == 0, rendered.stderr
    services = yaml.safe_load(rendered.stdout)["services"]
    assert set(published_host_ips(services["temporal-ui"])) == {"127.0.0.1"}
    for name, service in services.items():
        if name not in PUBLIC_SERVICES:
            assert all(ip in LOOPBACK for ip in published_host_ips(service)), name


@needs_docker_compose
@pytest.mark.parametrize("name", SECRETS)
def test_docker_compose_refuses_it_without_a_secret(tmp_path, name):
    rendered = render(tmp_path, {key: value for key, value in SECRETS.items() if key != name})
    assert rendered.returncode != 0
    assert name in rendered.stderr


@needs_docker_compose
def test_docker_compose_refuses_empty_secrets(tmp_path):
    rendered = render(tmp_path, dict.fromkeys(SECRETS, ""))
    assert rendered.returncode != 0
    assert any(name in rendered.stderr for name in SECRETS), rendered.stderr
