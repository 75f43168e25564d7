"""One settings object for the API and the worker, read once from the environment (each
field from its name in upper case, or a ``.env`` file); docs/configuration.md lists them.
"""

import base64
import binascii
import os
import re
import sys
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal, Self

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from temporalio.service import TLSConfig

from domain.names import WORKFLOW_TASK_QUEUE
from domain.payloads import SagaTimeouts
from domain.status import ActivityRouting, SagaStyle

# The saga's windows unless set: their defaults are SagaTimeouts'.
WINDOWS = SagaTimeouts()
# A worker's sticky cache holds this many sagas (the Go SDK's default): at 10,000 open sagas a
# smaller cache replays a saga's history at most of its moves.
WORKFLOW_CACHE_SIZE = 10_000
# Long polls a Temporal worker keeps open per task type, fewer than the SDK's 5: with the saga's
# steps dispatched eagerly, the server spent less CPU per saga (docs/performance.md).
WORKER_POLLERS = 3

# A deployment name or build id: the server joins them as "name.build" and "name:build".
VERSION_PART = r"^[A-Za-z0-9_-]+$"
MIN_SECRET_LENGTH = 32  # HMAC-SHA256 secrets: at least the hash's 32 bytes
MIN_OPERATOR_KEY_LENGTH = 16
# The order-id key of a development run (AUTH_MODE=dev), where no secret is configured.
DEV_ORDER_ID_KEY = b"order-saga development only: not a secret"
# The payload key of a development run (AUTH_MODE=dev) without PAYLOAD_KEYS: histories are
# encrypted as in production, but with a key anyone can read here.
DEV_PAYLOAD_KEY = ("dev", b"order-saga dev key: not a secret")
PAYLOAD_KEY_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
# Settings of earlier versions, refused loudly rather than silently ignored.
RETIRED_AUTH_SETTINGS = ("API_KEYS", "CUSTOMER_TOKEN_SECRET")


def _check_lengths(values: list[SecretStr], minimum: int) -> list[SecretStr]:
    # The message never shows the value (hide_input_in_errors keeps pydantic from it too).
    for index, value in enumerate(values):
        if len(value.get_secret_value()) < minimum:
            raise ValueError(
                f"item {index + 1} is shorter than {minimum} characters "
                "(make one with: python -c 'import secrets; print(secrets.token_urlsafe(32))')"
            )
    return values


def _payload_key(index: int, entry: str) -> tuple[str, bytes]:
    # The message names the entry by position and id, never its key.
    key_id, sep, encoded = entry.partition(":")
    if not sep or not PAYLOAD_KEY_ID.match(key_id):
        raise ValueError(
            f"item {index + 1} is not id:base64key (an id of letters, digits, '-' or '_')"
        )
    try:
        key = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        key = b""
    if len(key) != 32:
        raise ValueError(
            f"key {key_id!r} is not 32 bytes in base64 (make one with: "
            "python -c 'import base64, os; print(base64.b64encode(os.urandom(32)).decode())')"
        )
    return key_id, key


def _days(days: float | None) -> timedelta | None:
    return None if days is None else timedelta(days=days)


class Settings(BaseSettings):
    """Configuration of every process. Defaults run everything on one machine."""

    # hide_input_in_errors: a validation error must not print API keys or secrets.
    model_config = SettingsConfigDict(env_file=".env", extra="ignore", hide_input_in_errors=True)

    database_url: SecretStr = Field(
        default=SecretStr("sqlite:///data/orders.db"),
        description=(
            "SQLAlchemy URL of the service database (SQLite file or PostgreSQL); secret, as it "
            "may carry the password."
        ),
    )
    database_pool_size: int = Field(
        default=10,
        ge=1,
        le=1000,
        description="Database connections per process (as many again under a burst).",
    )
    database_pool_timeout_seconds: float = Field(
        default=10,
        gt=0,
        description="How long a request waits for a free database connection (then 503).",
    )
    temporal_address: str = Field(
        default="localhost:7233", description="Temporal frontend host:port."
    )
    temporal_namespace: str = Field(default="default", description="Temporal namespace.")
    temporal_ui_url: str = Field(
        default="http://localhost:8233", description="Base URL of the Temporal Web UI (for links)."
    )
    temporal_api_key: SecretStr | None = Field(
        default=None, description="API key (e.g. Temporal Cloud)."
    )
    temporal_tls: bool = Field(default=False, description="Connect to Temporal over TLS.")
    temporal_tls_ca: Path | None = Field(default=None, description="CA certificate file (PEM).")
    temporal_tls_cert: Path | None = Field(
        default=None, description="Client certificate (mTLS, PEM)."
    )
    temporal_tls_key: Path | None = Field(
        default=None, description="Client private key (mTLS, PEM)."
    )
    temporal_grpc_compression: Literal["none", "gzip"] = Field(
        default="none",
        description=(
            "Compression of the calls to Temporal: none for a server on this host or network "
            "(gzip costs both ends CPU on every call for messages of a few hundred bytes), gzip "
            "over a slow link."
        ),
    )
    worker_deployment_name: str = Field(
        default="order-saga",
        pattern=VERSION_PART,
        max_length=100,
        description="Worker Deployment the workers run in (one per saga system).",
    )
    worker_build_id: str | None = Field(
        default=None,
        pattern=VERSION_PART,
        max_length=100,
        description=(
            "Build id of the workers' Worker Deployment Version. Unset: a hash of the saga's "
            "code (workflows/, domain/), so every change of the saga is a new build."
        ),
    )
    worker_versioning: bool = Field(
        default=True,
        description=(
            "Run the Temporal workers as a Worker Deployment Version, each saga pinned to the "
            "build it started on; false: unversioned workers (a Temporal without deployments)."
        ),
    )
    worker_promote: Literal["first", "always", "never"] = Field(
        default="first",
        description=(
            "When a worker makes its build the deployment's current version (where new sagas "
            "start): 'first' only when the deployment has none (a first deploy), 'always' at "
            "every start (make run), 'never' (the deploy promotes it)."
        ),
    )
    workflow_task_queue: str = Field(
        default=WORKFLOW_TASK_QUEUE, description="Task queue the API starts sagas on."
    )
    activity_routing: ActivityRouting = Field(
        default=ActivityRouting.WORKFLOW,
        description=(
            "Where new orchestrated sagas run their steps: 'workflow' (on the saga's own task "
            "queue, served by the saga's worker, dispatched eagerly by Temporal) or 'service' "
            "(each service's own queue, for services scaled apart). Each saga keeps the "
            "routing it started with (docs/sizing.md)."
        ),
    )
    saga_style: SagaStyle = Field(
        default=SagaStyle.ORCHESTRATION,
        description=(
            "How new orders' sagas run: 'orchestration' (a Temporal workflow) or "
            "'choreography' (events between the services on NATS JetStream; needs NATS_URL). "
            "Orders of both styles coexist; each keeps the style it was placed with."
        ),
    )
    nats_url: str | None = Field(
        default=None,
        description=(
            "NATS server(s) with JetStream, e.g. nats://127.0.0.1:14222 (comma-separated for a "
            "cluster). Set: the worker runs the choreographed saga's consumers, relay and "
            "sweepers, and the API publishes its events."
        ),
    )
    nats_stream_replicas: int = Field(
        default=1, ge=1, le=5, description="Replicas of the event streams (3 in a cluster)."
    )
    event_ack_wait_seconds: float = Field(
        default=15,
        gt=0,
        le=3600,
        description=(
            "How long a consumer may hold an event unacknowledged (a crashed worker's events "
            "are delivered again after it); longer than a handler's transaction budget."
        ),
    )
    event_max_deliveries: int = Field(
        default=5,
        ge=1,
        le=100,
        description="Deliveries of an event a consumer cannot apply before it is dead-lettered.",
    )
    payment_window_seconds: float = Field(
        default=WINDOWS.payment_window.total_seconds(),
        gt=0,
        description="How long the saga waits for confirm/cancel.",
    )
    dealer_assignment_window_seconds: float = Field(
        default=WINDOWS.dealer_assignment_window.total_seconds(),
        gt=0,
        description="How long the saga keeps trying to find a free dealer.",
    )
    dealer_retry_initial_seconds: float = Field(
        default=WINDOWS.dealer_retry_initial_interval.total_seconds(),
        gt=0,
        description="First wait between dealer assignment attempts (doubles).",
    )
    order_create_wait_seconds: float = Field(
        default=5, ge=0, description="How long POST /orders waits for the payment before a 202."
    )
    decisions_per_minute: int = Field(
        default=20,
        ge=1,
        le=100_000,
        description=(
            "Payment decisions on one payment, or delivery reports on one delivery, that one "
            "API process takes a minute (as many at once); beyond it 429 with Retry-After."
        ),
    )
    query_timeout_seconds: float = Field(
        default=5, gt=0, description="How long the API waits for a worker to answer a query."
    )
    event_log_retention_days: float | None = Field(
        default=30,
        ge=0,
        description=(
            "Days the choreographed saga's event log (published outbox rows, inbox rows, "
            "replayed dead letters) is kept after its order ended; empty: for good."
        ),
    )
    idempotency_key_retention_days: float | None = Field(
        default=30,
        ge=0,
        description=(
            "Days an Idempotency-Key is kept after its order ended; empty: for good. A replay "
            "after that still finds its order through ORDER_ID_SECRET (docs/configuration.md)."
        ),
    )
    retention_interval_seconds: float = Field(
        default=3600, gt=0, description="How often the worker deletes what outlived retention."
    )
    activity_threads: int = Field(default=16, ge=1, description="Worker threads for activities.")
    worker_pollers: int = Field(
        default=WORKER_POLLERS,
        ge=2,
        description=(
            "Long polls each Temporal worker keeps open for workflow tasks, and as many for "
            "activity tasks (the SDK's default is 5)."
        ),
    )
    workflow_cache_size: int = Field(
        default=WORKFLOW_CACHE_SIZE,
        ge=0,
        description=(
            "Sagas a workflow worker keeps in memory between tasks (sticky cache, ~90 KB "
            "each); beyond it the least recently used is evicted and replayed from history "
            "when it next moves (docs/performance.md#many-open-sagas)."
        ),
    )
    max_body_bytes: int = Field(
        default=1024 * 1024, ge=1, description="Largest request body the API reads (else 413)."
    )
    log_level: str = Field(default="INFO", description="Python log level.")
    auth_mode: Literal["required", "dev"] = Field(
        default="required",
        description=(
            "'required': every call but the health checks needs a credential, and the API "
            "refuses to start without any configured. 'dev': no credentials at all (make run)."
        ),
    )
    operator_api_keys: Annotated[list[SecretStr], NoDecode] = Field(
        default_factory=list,
        description=(
            f"Comma-separated operator keys (X-API-Key), {MIN_OPERATOR_KEY_LENGTH}+ characters; "
            "several at once to rotate one."
        ),
    )
    customer_token_secrets: Annotated[list[SecretStr], NoDecode] = Field(
        default_factory=list,
        description=(
            f"Comma-separated HMAC secrets ({MIN_SECRET_LENGTH}+ characters) of customer "
            "tokens (JWT HS256, 'Authorization: Bearer'): the first signs, all verify, so a "
            "secret is rotated by putting the new one first."
        ),
    )
    order_id_secret: SecretStr | None = Field(
        default=None,
        description=(
            f"HMAC secret ({MIN_SECRET_LENGTH}+ characters) from which the order id of an "
            "Idempotency-Key is derived, so nobody can compute which id another customer's key "
            "stands for. Required unless AUTH_MODE=dev. Keep it: a request replayed after its "
            "key's retention finds its order by it."
        ),
    )
    payload_keys: Annotated[list[SecretStr], NoDecode] = Field(
        default_factory=list,
        description=(
            "Comma-separated id:base64key AES-256 keys of the payloads sent to Temporal, "
            "newest first: the first encrypts, all decrypt. Required unless AUTH_MODE=dev "
            "(then a public development key)."
        ),
    )
    customer_token_ttl_seconds: int = Field(
        default=3600,
        gt=0,
        le=366 * 24 * 3600,
        description="Lifetime of the customer tokens `python -m api.auth token` issues.",
    )

    metrics_bind_address: str | None = Field(
        default=None,
        description=(
            "host:port of this process's Prometheus /metrics endpoint (SDK and saga metrics), "
            "e.g. 127.0.0.1:9464. Unset: no metrics endpoint."
        ),
    )
    otel_exporter: Literal["console", "otlp"] | None = Field(
        default=None,
        description=(
            "OpenTelemetry tracing: 'console' (spans to stdout) or 'otlp' (OTLP over HTTP). "
            "Unset: tracing off. Needs the 'otel' extra."
        ),
    )
    otel_exporter_otlp_endpoint: str | None = Field(
        default=None,
        description="OTLP/HTTP traces endpoint (default http://localhost:4318/v1/traces).",
    )

    @field_validator("event_log_retention_days", "idempotency_key_retention_days", mode="before")
    @classmethod
    def _empty_means_for_good(cls, value: Any) -> Any:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("metrics_bind_address", "otel_exporter", mode="before")
    @classmethod
    def _empty_means_off(cls, value: Any) -> Any:
        # METRICS_BIND_ADDRESS= or OTEL_EXPORTER= (empty) means off, as if unset.
        if isinstance(value, str) and value.strip().lower() in ("", "none", "off"):
            return None
        return value

    @field_validator("operator_api_keys", "customer_token_secrets", "payload_keys", mode="before")
    @classmethod
    def _comma_separated(cls, value: Any) -> Any:
        # OPERATOR_API_KEYS=k1,k2 (NoDecode: the environment's string reaches us as it is).
        if isinstance(value, str):
            return [item.strip() for item in value.split(",") if item.strip()]
        return value

    @field_validator("operator_api_keys")
    @classmethod
    def _long_enough_keys(cls, keys: list[SecretStr]) -> list[SecretStr]:
        return _check_lengths(keys, MIN_OPERATOR_KEY_LENGTH)

    @field_validator("customer_token_secrets")
    @classmethod
    def _long_enough_secrets(cls, secrets: list[SecretStr]) -> list[SecretStr]:
        return _check_lengths(secrets, MIN_SECRET_LENGTH)

    @field_validator("payload_keys")
    @classmethod
    def _well_formed_payload_keys(cls, keys: list[SecretStr]) -> list[SecretStr]:
        ids = [_payload_key(i, key.get_secret_value())[0] for i, key in enumerate(keys)]
        if len(set(ids)) != len(ids):
            raise ValueError("a key id is listed twice")
        return keys

    @field_validator("order_id_secret")
    @classmethod
    def _long_enough_order_id_secret(cls, secret: SecretStr | None) -> SecretStr | None:
        return None if secret is None else _check_lengths([secret], MIN_SECRET_LENGTH)[0]

    @field_validator("temporal_api_key", "order_id_secret", "worker_build_id", mode="before")
    @classmethod
    def _empty_means_none(cls, value: Any) -> Any:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("temporal_tls_ca", "temporal_tls_cert", "temporal_tls_key")
    @classmethod
    def _readable_file(cls, path: Path | None) -> Path | None:
        # Fail at startup, naming the setting, not at the first connection attempt.
        if path is not None and not (path.is_file() and os.access(path, os.R_OK)):
            raise ValueError(f"{path} is not a readable file")
        return path

    @field_validator("nats_url", mode="before")
    @classmethod
    def _empty_url_means_none(cls, value: Any) -> Any:
        return None if isinstance(value, str) and not value.strip() else value

    @model_validator(mode="after")
    def _choreography_needs_its_broker(self) -> Self:
        if self.saga_style == SagaStyle.CHOREOGRAPHY and self.nats_url is None:
            raise ValueError("SAGA_STYLE=choreography needs NATS_URL (the NATS JetStream server)")
        return self

    @model_validator(mode="after")
    def _client_cert_and_key_together(self) -> Self:
        if (self.temporal_tls_cert is None) != (self.temporal_tls_key is None):
            raise ValueError(
                "temporal_tls_cert and temporal_tls_key (TEMPORAL_TLS_CERT, TEMPORAL_TLS_KEY) "
                "go together: mTLS needs both the client certificate and its private key"
            )
        return self

    def auth_problem(self) -> str | None:
        """Why the API must not start with these settings (None: it may): auth is required
        unless ``AUTH_MODE=dev``, and then needs at least one kind of credential."""
        if self.auth_mode == "dev":
            return None
        if self.operator_api_keys or self.customer_token_secrets:
            if self.order_id_secret is None:
                return (
                    "ORDER_ID_SECRET is not set: the order ids of Idempotency-Keys would be "
                    "computable by anyone (make one with: "
                    "python -c 'import secrets; print(secrets.token_urlsafe(32))')"
                )
            return None
        problem = (
            "no credentials are configured: set OPERATOR_API_KEYS and/or CUSTOMER_TOKEN_SECRETS, "
            "or AUTH_MODE=dev for a development run without auth"
        )
        retired = [name for name in RETIRED_AUTH_SETTINGS if os.environ.get(name)]
        if retired:
            problem += (
                f" ({', '.join(retired)} is no longer read: operator keys are "
                "OPERATOR_API_KEYS, customer token secrets CUSTOMER_TOKEN_SECRETS)"
            )
        return problem

    @property
    def order_id_key(self) -> bytes:
        """The key of :func:`domain.names.order_id_for_idempotency_key`: ``ORDER_ID_SECRET``,
        or in ``AUTH_MODE=dev`` a fixed development key. ValueError without either."""
        if self.order_id_secret is not None:
            return self.order_id_secret.get_secret_value().encode()
        if self.auth_mode == "dev":
            return DEV_ORDER_ID_KEY
        raise ValueError("ORDER_ID_SECRET is not set (it is required unless AUTH_MODE=dev)")

    def payload_keys_problem(self) -> str | None:
        """Why no process may start with these settings' payload keys (None: it may)."""
        if self.payload_keys or self.auth_mode == "dev":
            return None
        return (
            "PAYLOAD_KEYS is not set (required unless AUTH_MODE=dev): Temporal would keep "
            "customer data in plain text (docs/configuration.md)"
        )

    @property
    def payload_key_ring(self) -> list[tuple[str, bytes]]:
        """``(key_id, key)`` of ``PAYLOAD_KEYS``, newest first, or in ``AUTH_MODE=dev`` the
        public development key. ValueError without either."""
        if self.payload_keys:
            return [_payload_key(i, k.get_secret_value()) for i, k in enumerate(self.payload_keys)]
        problem = self.payload_keys_problem()
        if problem is not None:
            raise ValueError(problem)
        return [DEV_PAYLOAD_KEY]

    @property
    def event_log_retention(self) -> timedelta | None:
        """How long the event log is kept after its order ended (None: for good)."""
        return _days(self.event_log_retention_days)

    @property
    def idempotency_key_retention(self) -> timedelta | None:
        """How long an Idempotency-Key is kept after its order ended (None: for good)."""
        return _days(self.idempotency_key_retention_days)

    @property
    def database_url_value(self) -> str:
        """The database URL itself (with its password): only for building the engine."""
        return self.database_url.get_secret_value()

    def engine_options(self) -> dict[str, Any]:
        """``store.db.make_engine``'s pool options."""
        return {
            "pool_size": self.database_pool_size,
            "pool_timeout": self.database_pool_timeout_seconds,
        }

    @property
    def saga_timeouts(self) -> SagaTimeouts:
        return SagaTimeouts(
            payment_window=timedelta(seconds=self.payment_window_seconds),
            dealer_assignment_window=timedelta(seconds=self.dealer_assignment_window_seconds),
            dealer_retry_initial_interval=timedelta(seconds=self.dealer_retry_initial_seconds),
        )

    def workflow_url(self, workflow_id: str) -> str:
        """Link to a workflow in the Temporal Web UI."""
        base = self.temporal_ui_url.rstrip("/")
        return f"{base}/namespaces/{self.temporal_namespace}/workflows/{workflow_id}"

    def tls_config(self) -> TLSConfig | bool:
        """TLS to the frontend: False (plain), True (system roots) or the PEM files' contents."""
        if not (self.temporal_tls or self.temporal_tls_cert or self.temporal_tls_ca):
            return bool(self.temporal_api_key)  # API keys always travel over TLS
        return TLSConfig(
            server_root_ca_cert=self.temporal_tls_ca.read_bytes() if self.temporal_tls_ca else None,
            client_cert=self.temporal_tls_cert.read_bytes() if self.temporal_tls_cert else None,
            client_private_key=self.temporal_tls_key.read_bytes()
            if self.temporal_tls_key
            else None,
        )


def load_settings(program: str, env_files: tuple[Path, ...] = ()) -> Settings:
    """The environment's settings (then ``.env`` and ``env_files``), or the process ends with
    one line saying which setting is wrong (a process's start, not a traceback)."""
    try:
        settings = Settings(_env_file=(Path(".env"), *env_files))
    except ValidationError as err:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])).upper() or 'settings'}: {e['msg']}"
            for e in err.errors()
        )
        sys.exit(f"{program}: the settings are wrong: {problems}")
    problem = settings.payload_keys_problem()
    if problem is not None:
        sys.exit(f"{program}: {problem}")
    return settings
