"""Temporal, as the door sees it: the connection, and what Temporal's errors mean."""

import dataclasses
from collections.abc import Sequence

from temporalio.api.workflowservice.v1 import DescribeNamespaceRequest
from temporalio.client import Client, Interceptor
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.converter import DataConverter, DefaultFailureConverterWithEncodedAttributes
from temporalio.service import GrpcCompression, RPCError, RPCStatusCode

from sagas.codec import EncryptionCodec
from settings import Settings
from telemetry import metrics_runtime

COMPRESSION = {"none": GrpcCompression.NONE, "gzip": GrpcCompression.GZIP}


class TemporalConnectError(RuntimeError):
    """Temporal could not be reached with these settings (says where, and with or without TLS)."""


def data_converter(settings: Settings) -> DataConverter:
    """The converter of every client and worker of the project: pydantic payloads, encrypted
    with ``PAYLOAD_KEYS`` (ValueError when the settings have no payload key). Failure messages
    are encrypted too: a saga's failure names the order's city."""
    return dataclasses.replace(
        pydantic_data_converter,
        payload_codec=EncryptionCodec(settings.payload_key_ring),
        failure_converter_class=DefaultFailureConverterWithEncodedAttributes,
    )


async def connect_temporal(
    settings: Settings, *, lazy: bool = False, interceptors: Sequence[Interceptor] = ()
) -> Client:
    """The process's one Temporal client, with :func:`data_converter` (and, with
    ``metrics_bind_address``, the Prometheus runtime). Raises TemporalConnectError (unless
    ``lazy``) when the server cannot be reached or does not speak the configured TLS mode.
    """
    tls = settings.tls_config()
    runtime = metrics_runtime(settings.metrics_bind_address)
    try:
        return await Client.connect(
            settings.temporal_address,
            namespace=settings.temporal_namespace,
            api_key=(
                settings.temporal_api_key.get_secret_value() if settings.temporal_api_key else None
            ),
            tls=tls,
            data_converter=data_converter(settings),
            interceptors=interceptors,
            lazy=lazy,
            runtime=runtime,
            grpc_compression=COMPRESSION[settings.temporal_grpc_compression],
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


def is_namespace_missing(err: RPCError) -> bool:
    """Temporal answered NOT_FOUND because the namespace does not exist (a configuration
    mistake), not because a workflow does not."""
    return err.status == RPCStatusCode.NOT_FOUND and any(
        detail.type_url.endswith("NamespaceNotFoundFailure") for detail in err.grpc_status.details
    )


def is_saga_missing(err: RPCError) -> bool:
    """Temporal answered NOT_FOUND for the workflow itself (never started, or gone)."""
    return err.status == RPCStatusCode.NOT_FOUND and not is_namespace_missing(err)


def temporal_misconfiguration(err: RPCError) -> str | None:
    """What is wrong with this process's Temporal settings, if ``err`` says so (else None)."""
    if is_namespace_missing(err):
        return f"the Temporal namespace does not exist (TEMPORAL_NAMESPACE): {err.message}"
    if err.status in (RPCStatusCode.PERMISSION_DENIED, RPCStatusCode.UNAUTHENTICATED):
        return (
            "Temporal refused this process's credentials (TEMPORAL_API_KEY, "
            f"TEMPORAL_TLS_CERT/KEY or the namespace's permissions): {err.message}"
        )
    return None


async def check_namespace(client: Client) -> None:
    """Raise ``RPCError`` unless Temporal answers and knows the client's namespace."""
    await client.workflow_service.describe_namespace(
        DescribeNamespaceRequest(namespace=client.namespace)
    )
