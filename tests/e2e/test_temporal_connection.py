"""The processes' one Temporal client calls the real dev server with the gRPC compression
``TEMPORAL_GRPC_COMPRESSION`` chooses: none by default (a server on this host or network),
gzip when asked for (the SDK's own default, for a slow link)."""

import pytest
from temporalio.api.workflowservice.v1 import DescribeNamespaceRequest
from temporalio.service import GrpcCompression

from sagas.temporal import connect_temporal
from settings import Settings
from tests.e2e.conftest import Stack


def test_calls_to_temporal_are_uncompressed_unless_asked():
    assert Settings().temporal_grpc_compression == "none"
    assert Settings(temporal_grpc_compression="gzip").temporal_grpc_compression == "gzip"
    with pytest.raises(ValueError, match="temporal_grpc_compression"):
        Settings(temporal_grpc_compression="zstd")


@pytest.mark.parametrize(
    ("chosen", "compression"), [("none", GrpcCompression.NONE), ("gzip", GrpcCompression.GZIP)]
)
async def test_the_client_calls_the_server_with_the_compression_chosen(
    stack: Stack, chosen: str, compression: GrpcCompression
) -> None:
    settings = stack.settings.model_copy(update={"temporal_grpc_compression": chosen})

    client = await connect_temporal(settings)

    assert client.service_client.config.grpc_compression == compression
    described = await client.workflow_service.describe_namespace(
        DescribeNamespaceRequest(namespace=settings.temporal_namespace)
    )
    assert described.namespace_info.name == settings.temporal_namespace
