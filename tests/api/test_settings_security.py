"""Security settings: API keys, the customer token secret, and TLS to Temporal.

Misconfiguration fails when the settings load, naming the setting, never at the first call.
"""

from pathlib import Path

import pytest
from pydantic import SecretStr, ValidationError
from temporalio.service import TLSConfig

from settings import Settings

# TLSConfig only carries the bytes to the SDK's core, so PEM-looking bytes are enough here;
# the e2e tests connect for real.
PEM = {
    "ca": b"-----BEGIN CERTIFICATE-----\nY2E=\n-----END CERTIFICATE-----\n",
    "cert": b"-----BEGIN CERTIFICATE-----\nY2VydA==\n-----END CERTIFICATE-----\n",
    "key": b"-----BEGIN PRIVATE KEY-----\na2V5\n-----END PRIVATE KEY-----\n",
}


@pytest.fixture
def pem_files(tmp_path: Path) -> dict[str, Path]:
    files = {}
    for name, content in PEM.items():
        files[name] = tmp_path / f"{name}.pem"
        files[name].write_bytes(content)
    return files


# --- API keys and the customer token secret --------------------------------------------------


def test_auth_is_off_by_default() -> None:
    settings = Settings()
    assert settings.api_keys == []
    assert settings.customer_token_secret is None


def test_api_keys_are_a_comma_separated_list(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("API_KEYS", " key-one, key-two ,, ")
    keys = Settings().api_keys
    assert [k.get_secret_value() for k in keys] == ["key-one", "key-two"]


def test_an_empty_api_keys_means_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("API_KEYS", "")
    assert Settings().api_keys == []


def test_an_empty_customer_token_secret_means_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUSTOMER_TOKEN_SECRET", "  ")
    assert Settings().customer_token_secret is None


def test_a_short_customer_token_secret_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUSTOMER_TOKEN_SECRET", "hunter2")
    with pytest.raises(ValidationError) as raised:
        Settings()
    assert raised.value.errors()[0]["loc"] == ("customer_token_secret",)
    assert "at least 16 characters" in str(raised.value)
    assert "hunter2" not in str(raised.value)


def test_secrets_never_show_in_a_repr_or_a_validation_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("API_KEYS", "very-secret-api-key")
    monkeypatch.setenv("CUSTOMER_TOKEN_SECRET", "very-secret-token-secret")
    settings = Settings()
    assert settings.api_keys == [SecretStr("very-secret-api-key")]
    assert "very-secret" not in repr(settings)
    monkeypatch.setenv("TEMPORAL_TLS_CERT", str(tmp_path / "missing.pem"))
    with pytest.raises(ValidationError) as raised:
        Settings()
    assert "very-secret" not in str(raised.value)


# --- TLS to Temporal -------------------------------------------------------------------------


def test_nothing_set_means_a_plain_connection() -> None:
    assert Settings().tls_config() is False


def test_an_api_key_alone_implies_tls() -> None:
    assert Settings(temporal_api_key="cloud-key").tls_config() is True


def test_tls_alone_trusts_the_system_roots() -> None:
    config = Settings(temporal_tls=True).tls_config()
    assert isinstance(config, TLSConfig)
    assert (config.server_root_ca_cert, config.client_cert, config.client_private_key) == (
        None,
        None,
        None,
    )


def test_mtls_carries_the_pem_files_contents(
    monkeypatch: pytest.MonkeyPatch, pem_files: dict[str, Path]
) -> None:
    monkeypatch.setenv("TEMPORAL_TLS_CA", str(pem_files["ca"]))
    monkeypatch.setenv("TEMPORAL_TLS_CERT", str(pem_files["cert"]))
    monkeypatch.setenv("TEMPORAL_TLS_KEY", str(pem_files["key"]))
    config = Settings().tls_config()
    assert isinstance(config, TLSConfig)
    assert config.server_root_ca_cert == PEM["ca"]
    assert config.client_cert == PEM["cert"]
    assert config.client_private_key == PEM["key"]


def test_a_ca_alone_turns_tls_on(pem_files: dict[str, Path]) -> None:
    config = Settings(temporal_tls_ca=pem_files["ca"]).tls_config()
    assert isinstance(config, TLSConfig)
    assert config.server_root_ca_cert == PEM["ca"]
    assert config.client_cert is None


@pytest.mark.parametrize("present", ["cert", "key"])
def test_a_client_cert_and_key_come_together(
    monkeypatch: pytest.MonkeyPatch, pem_files: dict[str, Path], present: str
) -> None:
    monkeypatch.setenv(f"TEMPORAL_TLS_{present.upper()}", str(pem_files[present]))
    with pytest.raises(ValidationError, match="temporal_tls_cert and temporal_tls_key"):
        Settings()


@pytest.mark.parametrize("field", ["temporal_tls_ca", "temporal_tls_cert", "temporal_tls_key"])
def test_a_tls_file_that_does_not_exist_is_refused_naming_the_setting(
    monkeypatch: pytest.MonkeyPatch, pem_files: dict[str, Path], tmp_path: Path, field: str
) -> None:
    # The other files are fine: only the missing one is reported.
    monkeypatch.setenv("TEMPORAL_TLS_CERT", str(pem_files["cert"]))
    monkeypatch.setenv("TEMPORAL_TLS_KEY", str(pem_files["key"]))
    missing = tmp_path / "nope.pem"
    monkeypatch.setenv(field.upper(), str(missing))
    with pytest.raises(ValidationError) as raised:
        Settings()
    errors = raised.value.errors()
    assert [e["loc"] for e in errors] == [(field,)]
    assert f"{missing} is not a readable file" in errors[0]["msg"]


def test_a_directory_is_not_a_tls_file(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="is not a readable file"):
        Settings(temporal_tls_ca=tmp_path)
