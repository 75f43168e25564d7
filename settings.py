"""One settings object for the API and the worker, read once from the environment.

Every field maps to an environment variable of the same name in upper case
(``DATABASE_URL``, ``TEMPORAL_ADDRESS``, ...); a ``.env`` file is read too. The README
lists them all.
"""

from datetime import timedelta
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.service import TLSConfig

from domain.names import WORKFLOW_TASK_QUEUE
from domain.payloads import SagaTimeouts


class Settings(BaseSettings):
    """Configuration of every process. Defaults run everything on one machine."""

    model_config = SettingsConfigDict(env_file=".env", extra="ignore")

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
    max_body_bytes: int = Field(
        default=1024 * 1024, ge=1, description="Largest request body the API reads (else 413)."
    )
    log_level: str = Field(default="INFO", description="Python log level.")

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
        if not (self.temporal_tls or self.temporal_tls_cert or self.temporal_tls_ca):
            return bool(self.temporal_api_key)  # API keys always travel over TLS
        return TLSConfig(
            server_root_ca_cert=self.temporal_tls_ca.read_bytes() if self.temporal_tls_ca else None,
            client_cert=self.temporal_tls_cert.read_bytes() if self.temporal_tls_cert else None,
            client_private_key=self.temporal_tls_key.read_bytes()
            if self.temporal_tls_key
            else None,
        )


async def connect_temporal(settings: Settings, *, lazy: bool = False) -> Client:
    """The process's one Temporal client, with the pydantic data converter the payloads need."""
    return await Client.connect(
        settings.temporal_address,
        namespace=settings.temporal_namespace,
        api_key=settings.temporal_api_key,
        tls=settings.tls_config(),
        data_converter=pydantic_data_converter,
        lazy=lazy,
    )
