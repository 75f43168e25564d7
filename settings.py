"""One settings object for the API and the worker, read once from the environment.

Every field maps to an environment variable of the same name in upper case
(``DATABASE_URL``, ``TEMPORAL_ADDRESS``, ...); a ``.env`` file is read too. The README
lists them all.
"""

import os
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal, Self

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from temporalio.client import Client, Interceptor
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.service import TLSConfig

from domain.names import WORKFLOW_TASK_QUEUE
from domain.payloads import SagaTimeouts
from telemetry import metrics_runtime

MIN_SECRET_LENGTH = 16


class Settings(BaseSettings):
    """Configuration of every process. Defaults run everything on one machine."""

    # hide_input_in_errors: a validation error must not print API keys or secrets.
    model_config = SettingsConfigDict(env_file=".env", extra="ignore", hide_input_in_errors=True)

    database_url: str = Field(
        default="sqlite:///data/orders.db",
        description="SQLAlchemy URL of the service database (SQLite file or PostgreSQL).",
    )
    temporal_address: str = Field(
        default="localhost:7233", description="Temporal frontend host:port."
    )
    temporal_namespace: str = Field(default="default", description="Temporal namespace.")
    temporal_ui_url: str = Field(
        default="http://localhost:8233", description="Base URL of the Temporal Web UI (for links)."
    )
    temporal_api_key: str | None = Field(default=None, description="API key (e.g. Temporal Cloud).")
    temporal_tls: bool = Field(default=False, description="Connect to Temporal over TLS.")
    temporal_tls_ca: Path | None = Field(default=None, description="CA certificate file (PEM).")
    temporal_tls_cert: Path | None = Field(
        default=None, description="Client certificate (mTLS, PEM)."
    )
    temporal_tls_key: Path | None = Field(
        default=None, description="Client private key (mTLS, PEM)."
    )
    workflow_task_queue: str = Field(
        default=WORKFLOW_TASK_QUEUE, description="Task queue the API starts sagas on."
    )
    payment_window_seconds: float = Field(
        default=1800, gt=0, description="How long the saga waits for confirm/cancel."
    )
    dealer_assignment_window_seconds: float = Field(
        default=20, gt=0, description="How long the saga keeps trying to find a free dealer."
    )
    dealer_retry_initial_seconds: float = Field(
        default=2, gt=0, description="First wait between dealer assignment attempts (doubles)."
    )
    order_create_wait_seconds: float = Field(
        default=5, ge=0, description="How long POST /orders waits for the payment before a 202."
    )
    query_timeout_seconds: float = Field(
        default=5, gt=0, description="How long the API waits for a worker to answer a query."
    )
    activity_threads: int = Field(default=16, ge=1, description="Worker threads for activities.")
    workflow_cache_size: int = Field(
        default=1000,
        ge=0,
        description=(
            "Sagas a workflow worker keeps in memory between tasks (sticky cache); beyond it "
            "the least recently used is evicted and replayed from history when needed."
        ),
    )
    max_body_bytes: int = Field(
        default=1024 * 1024, ge=1, description="Largest request body the API reads (else 413)."
    )
    log_level: str = Field(default="INFO", description="Python log level.")
    api_keys: Annotated[list[SecretStr], NoDecode] = Field(
        default_factory=list,
        description=(
            "Comma-separated keys; when set, every mutating call needs one in X-API-Key "
            "(several at once for rotation). Empty: no API key is asked for (dev)."
        ),
    )
    customer_token_secret: SecretStr | None = Field(
        default=None,
        description=(
            "HMAC secret of customer tokens; when set, a customer's own calls need "
            "'Authorization: Bearer <token>' (python -m api.auth token <customer_id>)."
        ),
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

    @field_validator("metrics_bind_address", "otel_exporter", mode="before")
    @classmethod
    def _empty_means_off(cls, value: Any) -> Any:
        # METRICS_BIND_ADDRESS= or OTEL_EXPORTER= (empty) means off, as if unset.
        if isinstance(value, str) and value.strip().lower() in ("", "none", "off"):
            return None
        return value

    @field_validator("api_keys", mode="before")
    @classmethod
    def _split_api_keys(cls, value: Any) -> Any:
        # API_KEYS=k1,k2 (NoDecode: the environment's string reaches us as it is).
        if isinstance(value, str):
            return [key.strip() for key in value.split(",") if key.strip()]
        return value

    @field_validator("customer_token_secret", mode="before")
    @classmethod
    def _strong_enough_secret(cls, value: Any) -> Any:
        if isinstance(value, str):
            if not value.strip():
                return None  # CUSTOMER_TOKEN_SECRET= (empty) means off, as if unset
            if len(value) < MIN_SECRET_LENGTH:
                raise ValueError(
                    f"must be at least {MIN_SECRET_LENGTH} characters "
                    "(e.g. python -c 'import secrets; print(secrets.token_hex(32))')"
                )
        return value

    @field_validator("temporal_tls_ca", "temporal_tls_cert", "temporal_tls_key")
    @classmethod
    def _readable_file(cls, path: Path | None) -> Path | None:
        # Fail at startup, naming the setting, not at the first connection attempt.
        if path is not None and not (path.is_file() and os.access(path, os.R_OK)):
            raise ValueError(f"{path} is not a readable file")
        return path

    @model_validator(mode="after")
    def _client_cert_and_key_together(self) -> Self:
        if (self.temporal_tls_cert is None) != (self.temporal_tls_key is None):
            raise ValueError(
                "temporal_tls_cert and temporal_tls_key (TEMPORAL_TLS_CERT, TEMPORAL_TLS_KEY) "
                "go together: mTLS needs both the client certificate and its private key"
            )
        return self

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


class TemporalConnectError(RuntimeError):
    """Temporal could not be reached with these settings (says where, and with or without TLS)."""


async def connect_temporal(
    settings: Settings, *, lazy: bool = False, interceptors: Sequence[Interceptor] = ()
) -> Client:
    """The process's one Temporal client, with the pydantic data converter the payloads need.

    With ``metrics_bind_address`` set, the client (and its workers) run on the process's
    Prometheus runtime (telemetry.py); ``interceptors`` are e.g. the tracing interceptor.

    Raises TemporalConnectError (unless ``lazy``) when the server cannot be reached, or does
    not speak the TLS mode configured, rather than retrying in silence.
    """
    tls = settings.tls_config()
    runtime = metrics_runtime(settings.metrics_bind_address)
    try:
        return await Client.connect(
            settings.temporal_address,
            namespace=settings.temporal_namespace,
            api_key=settings.temporal_api_key,
            tls=tls,
            data_converter=pydantic_data_converter,
            interceptors=interceptors,
            lazy=lazy,
            runtime=runtime,
        )
    except RuntimeError as err:
        hint = (
            "TLS is on (TEMPORAL_TLS, TEMPORAL_TLS_CA/CERT or TEMPORAL_API_KEY is set); "
            "a plain local dev server needs them unset"
            if tls
            else "TLS is off; a server that requires it needs TEMPORAL_TLS=true"
        )
        raise TemporalConnectError(
            f"cannot connect to Temporal at {settings.temporal_address} "
            f"(namespace {settings.temporal_namespace}): {err}. {hint}"
        ) from err
