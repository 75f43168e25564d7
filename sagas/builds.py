"""Which builds of the saga serve which open sagas: the Worker Deployment, read from Temporal.

Which build is current, which are draining, and how many open sagas each still has.
"""

from dataclasses import dataclass
from datetime import datetime

from temporalio.api.enums.v1 import WorkerDeploymentVersionStatus
from temporalio.api.workflowservice.v1 import DescribeWorkerDeploymentRequest
from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode

STATUS = {
    WorkerDeploymentVersionStatus.WORKER_DEPLOYMENT_VERSION_STATUS_INACTIVE: "inactive",
    WorkerDeploymentVersionStatus.WORKER_DEPLOYMENT_VERSION_STATUS_CURRENT: "current",
    WorkerDeploymentVersionStatus.WORKER_DEPLOYMENT_VERSION_STATUS_RAMPING: "ramping",
    WorkerDeploymentVersionStatus.WORKER_DEPLOYMENT_VERSION_STATUS_DRAINING: "draining",
    WorkerDeploymentVersionStatus.WORKER_DEPLOYMENT_VERSION_STATUS_DRAINED: "drained",
    WorkerDeploymentVersionStatus.WORKER_DEPLOYMENT_VERSION_STATUS_CREATED: "created",
}


def pinned_to(deployment_name: str, build_id: str) -> str:
    """The visibility query of the open sagas pinned to a build."""
    version = f"{deployment_name}:{build_id}"
    return f"TemporalWorkerDeploymentVersion='{version}' AND ExecutionStatus='Running'"


async def open_sagas(client: Client, deployment_name: str, build_id: str) -> int:
    """How many open sagas are pinned to the build (from visibility: a second behind)."""
    return (await client.count_workflows(pinned_to(deployment_name, build_id))).count


@dataclass(frozen=True)
class Build:
    """One build of the deployment: its status, when it was created, its open sagas."""

    build_id: str
    status: str
    created: datetime
    open_sagas: int


async def builds(client: Client, deployment_name: str) -> list[Build]:
    """The deployment's builds, newest first ([] when no worker has run in it yet)."""
    try:
        described = await client.workflow_service.describe_worker_deployment(
            DescribeWorkerDeploymentRequest(
                namespace=client.namespace, deployment_name=deployment_name
            )
        )
    except RPCError as err:
        if err.status == RPCStatusCode.NOT_FOUND:
            return []
        raise
    found = []
    for summary in described.worker_deployment_info.version_summaries:
        build_id = summary.deployment_version.build_id
        found.append(
            Build(
                build_id=build_id,
                status=STATUS.get(summary.status, "unknown"),
                created=summary.create_time.ToDatetime(),
                open_sagas=await open_sagas(client, deployment_name, build_id),
            )
        )
    return sorted(found, key=lambda b: b.created, reverse=True)
