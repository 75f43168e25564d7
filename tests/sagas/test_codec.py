"""The payload codec against real AES-256-GCM: what Temporal stores is ciphertext, any listed
key reads it, the newest key writes, and an altered payload or an unknown key fails loudly."""

import base64
import os
from decimal import Decimal

import pytest
from pydantic import SecretStr
from temporalio.api.common.v1 import Payload

from domain.payloads import OrderItem, OrderRequest
from sagas.codec import ENCODING, KEY_ID, EncryptionCodec, PayloadDecryptError
from sagas.temporal import data_converter
from settings import Settings

KEY_A = ("a", os.urandom(32))
KEY_B = ("b", os.urandom(32))
ORDER = OrderRequest(
    customer_id="customer-4711",
    items=[OrderItem(product_id="rare-book-42", quantity=1, unit_price=Decimal("12.50"))],
    province="Gilan",
    city="Rasht",
)


def plain(data: bytes = b'{"city":"Rasht"}') -> Payload:
    return Payload(metadata={"encoding": b"json/plain"}, data=data)


async def test_a_payload_round_trips_and_is_stored_as_ciphertext() -> None:
    codec = EncryptionCodec([KEY_A])
    [sealed] = await codec.encode([plain()])
    assert sealed.metadata["encoding"] == ENCODING
    assert sealed.metadata[KEY_ID] == b"a"
    assert b"Rasht" not in sealed.SerializeToString()
    assert b"json/plain" not in sealed.SerializeToString()
    assert await codec.decode([sealed]) == [plain()]


async def test_the_same_payload_encrypts_differently_each_time() -> None:
    codec = EncryptionCodec([KEY_A])
    first, second = await codec.encode([plain(), plain()])
    assert first.data != second.data


async def test_an_altered_payload_fails_authentication() -> None:
    codec = EncryptionCodec([KEY_A])
    [sealed] = await codec.encode([plain()])
    tampered = bytearray(sealed.data)
    tampered[-1] ^= 1
    sealed.data = bytes(tampered)
    with pytest.raises(PayloadDecryptError, match="failed authentication"):
        await codec.decode([sealed])


async def test_a_truncated_payload_fails_authentication() -> None:
    codec = EncryptionCodec([KEY_A])
    [sealed] = await codec.encode([plain()])
    for length in (0, 5, 20):
        sealed.data = sealed.data[:length]
        with pytest.raises(PayloadDecryptError, match="failed authentication"):
            await codec.decode([sealed])


async def test_a_payload_relabelled_with_another_listed_key_fails() -> None:
    [sealed] = await EncryptionCodec([KEY_A]).encode([plain()])
    sealed.metadata[KEY_ID] = b"b"
    with pytest.raises(PayloadDecryptError, match="'b' failed authentication"):
        await EncryptionCodec([KEY_B, KEY_A]).decode([sealed])


async def test_a_payload_of_an_unknown_key_id_fails_naming_it() -> None:
    [sealed] = await EncryptionCodec([KEY_A]).encode([plain()])
    with pytest.raises(PayloadDecryptError, match="key id 'a', which PAYLOAD_KEYS does not list"):
        await EncryptionCodec([KEY_B]).decode([sealed])


async def test_after_rotation_old_payloads_decode_and_new_ones_use_the_newest_key() -> None:
    [old] = await EncryptionCodec([KEY_A]).encode([plain()])
    rotated = EncryptionCodec([KEY_B, KEY_A])
    assert await rotated.decode([old]) == [plain()]
    [new] = await rotated.encode([plain()])
    assert new.metadata[KEY_ID] == b"b"
    with pytest.raises(PayloadDecryptError):
        await EncryptionCodec([KEY_A]).decode([new])


async def test_a_payload_that_is_not_encrypted_passes_through() -> None:
    assert await EncryptionCodec([KEY_A]).decode([plain()]) == [plain()]


async def test_the_projects_converter_encrypts_an_order_and_reads_it_back() -> None:
    keys = [SecretStr(f"{KEY_A[0]}:{base64.b64encode(KEY_A[1]).decode()}")]
    converter = data_converter(Settings(payload_keys=keys, auth_mode="required"))
    [payload] = await converter.encode([ORDER])
    stored = payload.SerializeToString()
    for secret in (b"customer-4711", b"rare-book-42", b"Rasht"):
        assert secret not in stored
    assert await converter.decode([payload], [OrderRequest]) == [ORDER]
