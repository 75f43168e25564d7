"""docker-compose.yml, the production topology: no secret has a default, auth is on, the Web UI
is private and read-only, the migration job adds no demo data, Temporal TLS is passed through;
the choreographed saga's broker is a three-node JetStream cluster (one pinned image, a volume
per node, no published port) that the app reaches at all three nodes with three replicas per
stream and waits for; every worker's healthcheck checks what that worker runs.

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

from tests.test_layers import FLOORS

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
    "ORDER_ID_SECRET": "ci-order-id-secret-0123456789abcdef0123",
    "PAYLOAD_KEYS": "ci:Y2ktcGF5bG9hZC1rZXktMDEyMzQ1Njc4OWFiY2RlZiE=",
}
REMOVED_SETTINGS = ("API_KEYS", "CUSTOMER_TOKEN_SECRET")
TEMPORAL_PASS_THROUGH = (
    "TEMPORAL_API_KEY",
    "TEMPORAL_TLS",
    "TEMPORAL_TLS_CA",
    "TEMPORAL_TLS_CERT",
    "TEMPORAL_TLS_KEY",
    "TEMPORAL_GRPC_COMPRESSION",
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


# ---------------------------------------------------------------- the NATS JetStream cluster

NATS_IMAGE = re.search(r"&nats-image\s+(\S+)", RAW)
# The services running the pinned NATS image: the cluster's nodes.
NATS_SERVICES = sorted(
    name
    for name, service in SERVICES.items()
    if NATS_IMAGE is not None and service.get("image") == NATS_IMAGE.group(1)
)
WORKERS = sorted(name for name in APP_SERVICES if name.startswith("worker-"))
# The app services that run the sagas (the migration job only migrates).
SAGA_SERVICES = ["api", *WORKERS]


def flags(service: dict[str, Any]) -> dict[str, str]:
    """A nats service's ``--name=value`` command-line flags as a mapping (``--jetstream``: "")."""
    found = {}
    for arg in service.get("command") or []:
        name, _, value = str(arg).partition("=")
        found[name] = value
    return found


def test_the_nats_nodes_run_the_pinned_image_set_only_in_its_anchor() -> None:
    assert NATS_IMAGE is not None, "no &nats-image anchor under x-images"
    image = NATS_IMAGE.group(1)
    assert re.fullmatch(r"nats:\d+\.\d+\.\d+\S*", image), f"{image} is not pinned"
    assert NATS_SERVICES == ["nats-1", "nats-2", "nats-3"]
    # Written once (the anchor); every node takes it from there.
    assert BODY.count(image) == 1, f"{image} is written out more than once"
    assert not re.search(r"image:\s*[\"']?nats:", BODY), (
        "a nats image is written out, not *nats-image"
    )


def test_each_nats_node_keeps_its_store_on_its_own_volume() -> None:
    declared = set(yaml.safe_load(RAW).get("volumes") or {})
    volumes = {}
    for name in NATS_SERVICES:
        service = SERVICES[name]
        store = flags(service).get("--store_dir")
        assert store, f"{name} has no --store_dir"
        mounts = [str(m).split(":") for m in service.get("volumes") or []]
        on_store = [source for source, target, *_ in mounts if target == store]
        assert len(on_store) == 1, f"{name}: no volume mounted at its store {store}: {mounts}"
        assert on_store[0] in declared, f"{name}: {on_store[0]} is not a named volume"
        volumes[name] = on_store[0]
    assert len(set(volumes.values())) == len(NATS_SERVICES), f"a volume is shared: {volumes}"


def test_no_nats_node_publishes_a_port() -> None:
    published = {n: SERVICES[n]["ports"] for n in NATS_SERVICES if SERVICES[n].get("ports")}
    assert published == {}, f"NATS reachable from outside the compose network: {published}"
    assert all(SERVICES[n].get("network_mode") != "host" for n in NATS_SERVICES)


def test_the_nats_nodes_form_one_jetstream_cluster() -> None:
    routes = set()
    for name in NATS_SERVICES:
        node = flags(SERVICES[name])
        assert node.get("--name") == name, f"{name}: --name={node.get('--name')}"
        assert "--jetstream" in node, f"{name}: JetStream is off"
        cluster_port = node["--cluster"].rsplit(":", 1)[1]
        routes.add(f"nats://{name}:{cluster_port}")
    every = [flags(SERVICES[name]) for name in NATS_SERVICES]
    assert len({node["--cluster_name"] for node in every}) == 1, "not one cluster name"
    for node in every:
        assert set(node["--routes"].split(",")) == routes, node["--routes"]
        # The healthcheck asks this node's monitoring port whether it is current.
        health = " ".join(SERVICES[node["--name"]]["healthcheck"]["test"])
        assert f"127.0.0.1:{node['--http_port']}/healthz" in health, health


def test_the_app_reaches_every_nats_node_and_keeps_three_replicas() -> None:
    nodes = {f"nats://{name}:4222" for name in NATS_SERVICES}
    for name in APP_SERVICES:
        env = environment(SERVICES[name])
        assert set(str(env.get("NATS_URL")).split(",")) == nodes, (name, env.get("NATS_URL"))
        assert str(env.get("NATS_STREAM_REPLICAS")) == str(len(NATS_SERVICES)) == "3", name
        # The style of new orders comes from the shell or .env; orchestration by default.
        assert env.get("SAGA_STYLE") == "${SAGA_STYLE:-orchestration}", name
        assert resolve(env["SAGA_STYLE"]) == "orchestration"


def test_every_worker_runs_and_healthchecks_its_own_worker_args() -> None:
    args: dict[str, str] = {}
    for name in WORKERS:
        service = SERVICES[name]
        args[name] = str(environment(service).get("WORKER_ARGS") or "")
        assert args[name], f"{name} sets no WORKER_ARGS"
        assert service["command"] == ["sh", "-c", "exec python worker.py $$WORKER_ARGS"], name
        assert service["healthcheck"]["test"] == [
            "CMD-SHELL",
            "python worker.py --check $$WORKER_ARGS",
        ], name
    assert args["worker-events"] == "--events"
    assert len(set(args.values())) == len(WORKERS), f"two workers run the same: {args}"
    queues = sorted(a.removeprefix("--queue ") for a in args.values() if a != "--events")
    assert queues == ["deliveries", "order-process", "orders", "payments"]


def test_the_api_and_the_workers_wait_for_every_nats_node_to_be_healthy() -> None:
    for name in SAGA_SERVICES:
        depends_on = SERVICES[name].get("depends_on") or {}
        assert isinstance(depends_on, dict), f"{name}: depends_on without conditions"
        conditions = {n: (depends_on.get(n) or {}).get("condition") for n in NATS_SERVICES}
        assert set(conditions.values()) == {"service_healthy"}, (name, conditions)


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
    # What the containers get: the three nodes, three replicas, the style of the shell (else
    # orchestration), and each worker's own arguments in its healthcheck (still escaped).
    style = os.environ.get("SAGA_STYLE") or "orchestration"
    for name in SAGA_SERVICES:
        env = environment(services[name])
        assert env["NATS_URL"] == ",".join(f"nats://{n}:4222" for n in NATS_SERVICES), name
        assert (str(env["NATS_STREAM_REPLICAS"]), env["SAGA_STYLE"]) == ("3", style)
    for name in WORKERS:
        check = services[name]["healthcheck"]["test"][-1]
        assert check == "python worker.py --check $$WORKER_ARGS", name
    assert environment(services["worker-events"])["WORKER_ARGS"] == "--events"


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


def test_the_image_and_the_wheel_hold_every_room_of_the_product() -> None:
    """Each package and top-level module the product imports (the rooms of tests/test_layers.py
    but the rigs) is copied into the image and packaged in the wheel: a new room left out
    would start in tests and fail in production with an ImportError."""
    root = COMPOSE_FILE.parent
    rooms = [room for room in FLOORS if room not in ("tools", "migrations")]
    dockerfile = (root / "Dockerfile").read_text()
    copied = set(re.findall(r"^COPY (\S+) \./\1$", dockerfile, re.MULTILINE))
    copied |= {
        name.removesuffix(".py")
        for line in re.findall(r"^COPY ((?:\S+\.py )+)", dockerfile, re.MULTILINE)
        for name in line.split()
    }
    pyproject = (root / "pyproject.toml").read_text()
    packaged = set(re.findall(r'"(\w+)\*"', pyproject))
    packaged |= set(re.findall(r'"(\w+)"', pyproject.split("py-modules = ", 1)[1].split("\n")[0]))
    assert [room for room in rooms if room not in copied] == []
    assert [room for room in rooms if room not in packaged] == []


# ---------------------------------------------------------------- monitoring

MONITORING = COMPOSE_FILE.parent / "monitoring"
SCRAPE = yaml.safe_load((MONITORING / "prometheus" / "prometheus.yml").read_text())


def mounts(service: dict[str, Any]) -> dict[str, str]:
    """A service's bind mounts and volumes: target path -> source."""
    found = {}
    for mount in service.get("volumes") or []:
        source, target, *_ = str(mount).split(":")
        found[target] = source
    return found


def scrape_targets(job: str) -> set[str]:
    """The hosts a Prometheus job scrapes: its DNS names and static targets."""
    (config,) = [c for c in SCRAPE["scrape_configs"] if c["job_name"] == job]
    hosts = {name for sd in config.get("dns_sd_configs", []) for name in sd["names"]}
    static = [t for sc in config.get("static_configs", []) for t in sc["targets"]]
    return hosts | {target.rsplit(":", 1)[0] for target in static}


def test_the_monitoring_images_are_pinned_by_tag_in_their_anchors() -> None:
    for anchor, repository in (
        ("prometheus-image", "prom/prometheus"),
        ("grafana-image", "grafana/grafana"),
        ("nats-exporter-image", "natsio/prometheus-nats-exporter"),
    ):
        found = re.search(rf"&{anchor}\s+(\S+)", RAW)
        assert found, f"no &{anchor} anchor under x-images"
        assert re.fullmatch(rf"{re.escape(repository)}:v?\d+\.\d+\.\d+", found.group(1))


def test_prometheus_loads_the_rules_and_scrapes_every_app_process_and_nats_node() -> None:
    prometheus = SERVICES["prometheus"]
    assert mounts(prometheus)["/etc/prometheus"] == "./monitoring/prometheus"
    assert "alerts.yml" in SCRAPE["rule_files"]
    assert scrape_targets("order-saga-api") == {"api"}
    assert scrape_targets("order-saga-workers") == set(WORKERS)
    exporters = scrape_targets("nats")
    assert exporters == {f"{node}-exporter" for node in NATS_SERVICES}
    for exporter in exporters:
        node = exporter.removesuffix("-exporter")
        assert SERVICES[exporter]["command"][-1] == f"http://{node}:8222", exporter
    # Every process it scrapes serves /metrics on the port it scrapes.
    (port,) = {sd["port"] for c in SCRAPE["scrape_configs"] for sd in c.get("dns_sd_configs", [])}
    for name in SAGA_SERVICES:
        assert environment(SERVICES[name]).get("METRICS_BIND_ADDRESS") == f"0.0.0.0:{port}", name


def test_grafana_is_provisioned_with_prometheus_and_the_dashboard() -> None:
    grafana = mounts(SERVICES["grafana"])
    assert grafana["/etc/grafana/provisioning"] == "./monitoring/grafana/provisioning"
    provisioning = MONITORING / "grafana" / "provisioning"
    sources = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())
    assert [s["url"] for s in sources["datasources"]] == ["http://prometheus:9090"]
    providers = yaml.safe_load((provisioning / "dashboards" / "order-saga.yml").read_text())
    (path,) = [p["options"]["path"] for p in providers["providers"]]
    assert grafana[path] == "./monitoring/grafana/dashboards"
    assert (MONITORING / "grafana" / "dashboards" / "order-saga.json").exists()
