"""/codec: Temporal's codec server protocol, so the Web UI and the ``temporal`` CLI show the
encrypted payloads of a saga's history in clear, to operators only."""

import base64
import binascii
from typing import Annotated

from fastapi import APIRouter, HTTPException, status
from pydantic import BaseModel, Field
from temporalio.api.common.v1 import Payload

from api.auth.callers import AuthenticatedJSONRoute, Operator
from api.deps import ServicesDep
from api.errors import responses
from sagas.codec import EncryptionCodec, PayloadDecryptError

router = APIRouter(prefix="/codec", tags=["codec"], route_class=AuthenticatedJSONRoute)

# One history page's payloads fit many times over; more is not a Web UI's call.
MAX_PAYLOADS = 1000


class CodecPayload(BaseModel):
    """A Temporal payload in protobuf JSON: each metadata value and the data in base64."""

    metadata: dict[str, str] = Field(default_factory=dict)
    data: str = ""


class CodecPayloads(BaseModel):
    """The codec server's request and answer body."""

    payloads: Annotated[list[CodecPayload], Field(max_length=MAX_PAYLOADS)]


def _unpack(body: CodecPayloads) -> list[Payload]:
    try:
        return [
            Payload(
                metadata={
                    key: base64.b64decode(value, validate=True)
                    for key, value in payload.metadata.items()
                },
                data=base64.b64decode(payload.data, validate=True),
            )
            for payload in body.payloads
        ]
    except (binascii.Error, ValueError):
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT, "a payload's metadata or data is not base64"
        ) from None


def _pack(payloads: list[Payload]) -> CodecPayloads:
    return CodecPayloads(
        payloads=[
            CodecPayload(
                metadata={
                    key: base64.b64encode(value).decode() for key, value in payload.metadata.items()
                },
                data=base64.b64encode(payload.data).decode(),
            )
            for payload in payloads
        ]
    )


@router.post(
    "/decode",
    operation_id="decodePayloads",
    response_model=CodecPayloads,
    responses=responses(401, 403, 422),
)
async def decode(body: CodecPayloads, services: ServicesDep, _caller: Operator) -> CodecPayloads:
    """The payloads in clear (those not encrypted come back as they are). 422 for a payload
    of a key id PAYLOAD_KEYS does not list, or one altered."""
    codec = EncryptionCodec(services.settings.payload_key_ring)
    try:
        return _pack(await codec.decode(_unpack(body)))
    except PayloadDecryptError as err:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(err)) from None


@router.post(
    "/encode",
    operation_id="encodePayloads",
    response_model=CodecPayloads,
    responses=responses(401, 403, 422),
)
async def encode(body: CodecPayloads, services: ServicesDep, _caller: Operator) -> CodecPayloads:
    """The payloads encrypted with the newest key (what the Web UI sends, a signal say)."""
    codec = EncryptionCodec(services.settings.payload_key_ring)
    return _pack(await codec.encode(_unpack(body)))
