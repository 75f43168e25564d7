"""The payload codec: every payload this project sends to Temporal (workflow and activity
inputs and results, signals, the memo, the Web UI summary) is encrypted with AES-256-GCM, so
Temporal's history and its backups hold no customer data. Keys have ids: the newest encrypts,
any listed key decrypts, and the key id travels in the payload's metadata (as in Temporal's
``samples-python/encryption``).
"""

import os
from collections.abc import Sequence

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from temporalio.api.common.v1 import Payload
from temporalio.converter import PayloadCodec

ENCODING = b"binary/encrypted"
KEY_ID = "encryption-key-id"
KEY_BYTES = 32  # AES-256
NONCE_BYTES = 12  # GCM's standard nonce, random per payload


class PayloadDecryptError(ValueError):
    """A payload could not be decrypted: its key id is not listed, or it was altered."""


class EncryptionCodec(PayloadCodec):
    """AES-256-GCM over whole serialized payloads. ``keys`` are ``(key_id, 32-byte key)``,
    newest first; payloads without the encrypted encoding pass through undecoded."""

    def __init__(self, keys: Sequence[tuple[str, bytes]]) -> None:
        if not keys:
            raise ValueError("the codec needs at least one key")
        for key_id, key in keys:
            if len(key) != KEY_BYTES:
                raise ValueError(f"key {key_id!r} is not {KEY_BYTES} bytes")
        self._newest = keys[0][0]
        self._ciphers = {key_id: AESGCM(key) for key_id, key in keys}

    @property
    def key_id(self) -> str:
        """The id of the key new payloads are encrypted with."""
        return self._newest

    async def encode(self, payloads: Sequence[Payload]) -> list[Payload]:
        return [self._encrypt(payload) for payload in payloads]

    async def decode(self, payloads: Sequence[Payload]) -> list[Payload]:
        return [self._decrypt(payload) for payload in payloads]

    def _encrypt(self, payload: Payload) -> Payload:
        nonce = os.urandom(NONCE_BYTES)
        key_id = self._newest.encode()
        # The key id is authenticated too: a payload relabelled with another id fails.
        sealed = self._ciphers[self._newest].encrypt(nonce, payload.SerializeToString(), key_id)
        return Payload(
            metadata={"encoding": ENCODING, KEY_ID: key_id},
            data=nonce + sealed,
        )

    def _decrypt(self, payload: Payload) -> Payload:
        if payload.metadata.get("encoding") != ENCODING:
            return payload
        key_id = payload.metadata.get(KEY_ID, b"").decode(errors="replace")
        cipher = self._ciphers.get(key_id)
        if cipher is None:
            raise PayloadDecryptError(
                f"payload encrypted with key id {key_id!r}, which PAYLOAD_KEYS does not list "
                f"(listed: {', '.join(self._ciphers)})"
            )
        nonce, sealed = payload.data[:NONCE_BYTES], payload.data[NONCE_BYTES:]
        try:
            if len(nonce) != NONCE_BYTES:
                raise InvalidTag
            plain = cipher.decrypt(nonce, sealed, key_id.encode())
        except InvalidTag:
            raise PayloadDecryptError(
                f"payload under key id {key_id!r} failed authentication: altered, or "
                "encrypted with another key of that id"
            ) from None
        return Payload.FromString(plain)
