"""/codec: Temporal's codec server protocol, so the Web UI and the ``temporal`` CLI show the
encrypted payloads of a saga's history in clear, to operators only."""

import base64
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, status
from google.protobuf.json_format import ParseDict, ParseError
from pydantic import BaseModel, ConfigDict, Field, model_validator
from temporalio.api.common.v1 import Payload, Payloads

from api.auth.callers import AuthenticatedJSONRoute, Operator
from api.deps import ServicesDep
from api.errors import responses
from sagas.codec import EncryptionCodec, PayloadDecryptError

router = APIRouter(prefix="/codec", tags=["codec"], route_class=AuthenticatedJSONRoute)

# One history page's payloads fit many times over; more is not a Web UI's call.
MAX_PAYLOADS = 1000
# Standard, padded base64: how protobuf JSON writes bytes.
Base64 = Annotated[
    str,
    Field(pattern=r"^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$"),
]


class _JSONObject(BaseModel):
    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _an_object(cls, value: Any) -> Any:
        # FastAPI validates bodies from attributes too: a number would pass as all defaults.
        if not isinstance(value, dict | BaseModel):
            raise ValueError("must be a JSON object")
        return value


class CodecPayload(_JSONObject):
    """A Temporal payload in protobuf JSON: each metadata value and the data in base64 (no
    external payloads: this project stores none outside the history)."""

    metadata: dict[str, Base64] = Field(default_factory=dict)
    data: Base64 = ""


class CodecPayloads(BaseModel):
    """The codec server's request and answer body (protobuf ``Payloads`` as JSON)."""

    model_config = ConfigDict(extra="forbid")

    payloads: Annotated[list[CodecPayload], Field(max_length=MAX_PAYLOADS)]


def _unpack(body: CodecPayloads) -> list[Payload]:
    try:
        parsed = ParseDict(body.model_dump(by_alias=True, exclude_defaults=True), Payloads())
    except ParseError as err:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT, f"not protobuf JSON Payloads: {err}"
        ) from None
    return list(parsed.payloads)


def _pack(payloads: list[Payload]) -> dict[str, Any]:
    def b64(value: bytes) -> str:
        return base64.b64encode(value).decode()

    return {
        "payloads": [
            {"metadata": {k: b64(v) for k, v in p.metadata.items()}, "data": b64(p.data)}
            for p in payloads
        ]
    }


@router.post(
    "/decode",
    operation_id="decodePayloads",
    response_model=CodecPayloads,
    responses=responses(401, 403, 422),
)
async def decode(body: CodecPayloads, services: ServicesDep, _caller: Operator) -> dict[str, Any]:
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
async def encode(body: CodecPayloads, services: ServicesDep, _caller: Operator) -> dict[str, Any]:
    """The payloads encrypted with the newest key (what the Web UI sends, a signal say)."""
    codec = EncryptionCodec(services.settings.payload_key_ring)
    return _pack(await codec.encode(_unpack(body)))
