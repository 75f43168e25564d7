"""Security settings: who may call the API (auth mode, operator keys, customer token secrets),
the secrets that must never show, and TLS to Temporal.

Misconfiguration fails when the settings load, naming the setting and never showing the
value, or, for missing credentials, when the API is built (``Settings.auth_problem``).
"""

import base64
import uuid
from pathlib import Path

import pytest
from pydantic import SecretStr, ValidationError
from temporalio.service import TLSConfig

from domain import names
from settings import (
    DEV_PAYLOAD_KEY,
    MIN_OPERATOR_KEY_LENGTH,
    MIN_SECRET_LENGTH,
    Settings,
    load_settings,
)

# TLSConfig only carries the bytes to the SDK's core, so PEM-looking bytes are enough here;
# the e2e tests connect for real.
PEM = {
    "ca": b"-----BEGIN CERTIFICATE-----\nY2E=\n-----END CERTIFICATE-----\n",
    "cert": b"-----BEGIN CERTIFICATE-----\nY2VydA==\n-----END CERTIFICATE-----\n",
    "key": b"-----BEGIN PRIVATE KEY-----\na2V5\n-----END PRIVATE KEY-----\n",
}
KEY_ONE = "operator-key-one-0123456789"
KEY_TWO = "operator-key-two-0123456789"
SECRET_ONE = "customer-token-secret-one-0123456789abcdef"
SECRET_TWO = "customer-token-secret-two-0123456789abcdef"
RETIRED = ("API_KEYS", "CUSTOMER_TOKEN_SECRET")


@pytest.fixture
def pem_files(tmp_path: Path) -> dict[str, Path]:
    files = {}
    for name, content in PEM.items():
        files[name] = tmp_path / f"{name}.pem"
        files[name].write_bytes(content)
    return files


@pytest.fixture(autouse=True)
def no_retired_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """The retired settings are no fields any more, so conftest does not clear them."""
    for name in RETIRED:
        monkeypatch.delenv(name, raising=False)


def values(secrets: list[SecretStr]) -> list[str]:
    return [secret.get_secret_value() for secret in secrets]


# --- auth mode, operator keys, customer token secrets ----------------------------------------


def test_auth_is_required_by_default_with_no_credential_configured() -> None:
    settings = Settings()
    assert settings.auth_mode == "required"
    assert settings.operator_api_keys == []
    assert settings.customer_token_secrets == []
    assert settings.customer_token_ttl_seconds == 3600


def test_auth_mode_dev_is_read_and_nothing_else_is_accepted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AUTH_MODE", "dev")
    assert Settings().auth_mode == "dev"
    for wrong in ("off", "none", "DEV ", ""):
        monkeypatch.setenv("AUTH_MODE", wrong)
        with pytest.raises(ValidationError) as raised:
            Settings()
        assert [e["loc"] for e in raised.value.errors()] == [("auth_mode",)], wrong


@pytest.mark.parametrize(
    ("name", "field", "first", "second"),
    [
        ("OPERATOR_API_KEYS", "operator_api_keys", KEY_ONE, KEY_TWO),
        ("CUSTOMER_TOKEN_SECRETS", "customer_token_secrets", SECRET_ONE, SECRET_TWO),
    ],
)
def test_credentials_are_comma_separated_lists(
    monkeypatch: pytest.MonkeyPatch, name: str, field: str, first: str, second: str
) -> None:
    monkeypatch.setenv(name, f" {first} ,, {second},  ,")
    assert values(getattr(Settings(), field)) == [first, second]  # in order: the first signs
    monkeypatch.setenv(name, first)
    assert values(getattr(Settings(), field)) == [first]
    for empty in ("", "  ", ",", " , ,"):
        monkeypatch.setenv(name, empty)
        assert getattr(Settings(), field) == [], repr(empty)


@pytest.mark.parametrize(
    ("name", "field", "minimum"),
    [
        ("OPERATOR_API_KEYS", "operator_api_keys", MIN_OPERATOR_KEY_LENGTH),
        ("CUSTOMER_TOKEN_SECRETS", "customer_token_secrets", MIN_SECRET_LENGTH),
    ],
)
def test_a_too_short_credential_is_refused_naming_the_setting_not_the_value(
    monkeypatch: pytest.MonkeyPatch, name: str, field: str, minimum: int
) -> None:
    assert (MIN_OPERATOR_KEY_LENGTH, MIN_SECRET_LENGTH) == (16, 32)
    long_enough = "L" * minimum
    short = "hunter2-" + "s" * (minimum - 9)  # one character short
    monkeypatch.setenv(name, f"{long_enough},{short}")
    with pytest.raises(ValidationError) as raised:
        Settings()
    errors = raised.value.errors()
    assert [e["loc"] for e in errors] == [(field,)]
    assert f"item 2 is shorter than {minimum} characters" in errors[0]["msg"]
    for shown in (str(raised.value), repr(raised.value)):
        assert field in shown
        assert "hunter2" not in shown
        assert long_enough not in shown
    # Exactly the minimum is enough.
    monkeypatch.setenv(name, long_enough)
    assert values(getattr(Settings(), field)) == [long_enough]


def test_a_too_short_credential_given_in_code_is_refused_too() -> None:
    with pytest.raises(ValidationError, match="operator_api_keys"):
        Settings(operator_api_keys=[SecretStr("short")])
    with pytest.raises(ValidationError, match="customer_token_secrets"):
        Settings(customer_token_secrets=[SecretStr("s" * (MIN_SECRET_LENGTH - 1))])


@pytest.mark.parametrize("ttl", ["0", "-1", str(400 * 24 * 3600), "an hour"])
def test_a_customer_token_ttl_out_of_range_is_refused(
    monkeypatch: pytest.MonkeyPatch, ttl: str
) -> None:
    monkeypatch.setenv("CUSTOMER_TOKEN_TTL_SECONDS", ttl)
    with pytest.raises(ValidationError) as raised:
        Settings()
    assert [e["loc"] for e in raised.value.errors()] == [("customer_token_ttl_seconds",)]


def test_credentials_never_show_in_a_repr_or_a_validation_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("OPERATOR_API_KEYS", f"{KEY_ONE},{KEY_TWO}")
    monkeypatch.setenv("CUSTOMER_TOKEN_SECRETS", f"{SECRET_ONE},{SECRET_TWO}")
    settings = Settings()
    assert values(settings.operator_api_keys) == [KEY_ONE, KEY_TWO]
    assert values(settings.customer_token_secrets) == [SECRET_ONE, SECRET_TWO]
    for shown in (repr(settings), str(settings), settings.model_dump_json()):
        for secret in (KEY_ONE, KEY_TWO, SECRET_ONE, SECRET_TWO):
            assert secret not in shown
    # Another setting is wrong: its error does not show the credentials loaded beside it.
    monkeypatch.setenv("TEMPORAL_TLS_CERT", str(tmp_path / "missing.pem"))
    with pytest.raises(ValidationError) as raised:
        Settings()
    for shown in (str(raised.value), repr(raised.value)):
        for secret in (KEY_ONE, KEY_TWO, SECRET_ONE, SECRET_TWO):
            assert secret not in shown


# --- auth_problem: the API refuses to start without credentials ------------------------------


@pytest.mark.parametrize(
    "configured",
    [
        {"auth_mode": "dev"},
        {"operator_api_keys": KEY_ONE, "order_id_secret": SECRET_TWO},
        {"customer_token_secrets": SECRET_ONE, "order_id_secret": SECRET_TWO},
        {
            "operator_api_keys": KEY_ONE,
            "customer_token_secrets": SECRET_ONE,
            "order_id_secret": SECRET_TWO,
        },
        # Dev mode ignores credentials; having some is no problem either.
        {"auth_mode": "dev", "operator_api_keys": KEY_ONE},
    ],
    ids=["dev", "operator keys", "customer secrets", "both", "dev with keys"],
)
def test_no_auth_problem_in_dev_mode_or_with_either_credential(
    monkeypatch: pytest.MonkeyPatch, configured: dict[str, str]
) -> None:
    for field, value in configured.items():
        monkeypatch.setenv(field.upper(), value)
    assert Settings().auth_problem() is None


@pytest.mark.parametrize("empty", [None, "", " , "], ids=["unset", "empty", "only commas"])
def test_required_auth_without_any_credential_is_a_problem(
    monkeypatch: pytest.MonkeyPatch, empty: str | None
) -> None:
    if empty is not None:
        monkeypatch.setenv("OPERATOR_API_KEYS", empty)
        monkeypatch.setenv("CUSTOMER_TOKEN_SECRETS", empty)
    problem = Settings().auth_problem()
    assert problem is not None
    for hint in ("OPERATOR_API_KEYS", "CUSTOMER_TOKEN_SECRETS", "AUTH_MODE=dev"):
        assert hint in problem
    assert "no longer read" not in problem  # no retired setting is set


def test_required_auth_without_an_order_id_secret_is_a_problem(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OPERATOR_API_KEYS", KEY_ONE)
    settings = Settings()
    problem = settings.auth_problem()
    assert problem is not None
    assert "ORDER_ID_SECRET is not set" in problem
    with pytest.raises(ValueError, match="ORDER_ID_SECRET"):
        _ = settings.order_id_key
    monkeypatch.setenv("ORDER_ID_SECRET", "hunter2-secret")
    with pytest.raises(ValidationError) as raised:
        Settings()
    assert "hunter2" not in str(raised.value)


def test_order_ids_of_idempotency_keys_depend_on_the_secret() -> None:
    one = Settings(auth_mode="required", order_id_secret=SecretStr(SECRET_ONE))
    two = Settings(auth_mode="required", order_id_secret=SecretStr(SECRET_TWO))
    derived = [
        names.order_id_for_idempotency_key(s.order_id_key, "alice", "k1") for s in (one, two)
    ]
    assert derived[0] != derived[1]
    assert derived[0] == names.order_id_for_idempotency_key(one.order_id_key, "alice", "k1")
    assert derived[0] != names.order_id_for_idempotency_key(one.order_id_key, "bob", "k1")
    assert uuid.UUID(derived[0]).version == 4


@pytest.mark.parametrize("retired", RETIRED)
def test_a_retired_setting_is_not_read_and_the_problem_names_it(
    monkeypatch: pytest.MonkeyPatch, retired: str
) -> None:
    old_value = "old-style-credential-0123456789abcdefghij"
    monkeypatch.setenv(retired, old_value)
    settings = Settings()
    assert settings.operator_api_keys == []
    assert settings.customer_token_secrets == []
    problem = settings.auth_problem()
    assert problem is not None
    assert f"{retired} is no longer read" in problem
    assert "OPERATOR_API_KEYS" in problem
    assert "CUSTOMER_TOKEN_SECRETS" in problem
    assert old_value not in problem


def test_both_retired_settings_are_named(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in RETIRED:
        monkeypatch.setenv(name, "old-style-credential-0123456789abcdefghij")
    problem = Settings().auth_problem()
    assert problem is not None
    assert "API_KEYS, CUSTOMER_TOKEN_SECRET is no longer read" in problem


# --- other secrets: the database URL and Temporal's API key ----------------------------------


def test_the_database_url_is_a_secret_its_password_never_shows(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    url = "postgresql://orders:pa55-hunter2-word@db.internal:5432/orders"
    monkeypatch.setenv("DATABASE_URL", url)
    settings = Settings()
    assert isinstance(settings.database_url, SecretStr)
    assert settings.database_url_value == url
    for shown in (repr(settings), str(settings), settings.model_dump_json()):
        assert "hunter2" not in shown
    assert Settings(database_url="sqlite:///x.db").database_url_value == "sqlite:///x.db"


def test_the_default_database_is_a_local_sqlite_file() -> None:
    assert Settings().database_url_value == "sqlite:///data/orders.db"


def test_the_temporal_api_key_is_a_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEMPORAL_API_KEY", "temporal-cloud-key-hunter2")
    settings = Settings()
    assert isinstance(settings.temporal_api_key, SecretStr)
    assert settings.temporal_api_key.get_secret_value() == "temporal-cloud-key-hunter2"
    for shown in (repr(settings), str(settings), settings.model_dump_json()):
        assert "hunter2" not in shown


@pytest.mark.parametrize("empty", ["", "   "])
def test_an_empty_temporal_api_key_means_none(monkeypatch: pytest.MonkeyPatch, empty: str) -> None:
    monkeypatch.setenv("TEMPORAL_API_KEY", empty)
    settings = Settings()
    assert settings.temporal_api_key is None
    assert settings.tls_config() is False  # and so no TLS implied by it
    assert Settings(temporal_api_key=empty).temporal_api_key is None


# --- payload keys (Temporal payload encryption) -----------------------------------------------

PAYLOAD_KEY = base64.b64encode(bytes(range(32))).decode()


def test_payload_keys_are_read_newest_first(monkeypatch: pytest.MonkeyPatch) -> None:
    other = base64.b64encode(bytes(32)).decode()
    monkeypatch.setenv("PAYLOAD_KEYS", f"2026-12:{PAYLOAD_KEY}, 2026-01:{other}")
    ring = Settings().payload_key_ring
    assert ring == [("2026-12", bytes(range(32))), ("2026-01", bytes(32))]


@pytest.mark.parametrize(
    ("value", "says"),
    [
        (PAYLOAD_KEY, "item 1 is not id:base64key"),
        (f"k1:{PAYLOAD_KEY[:-4]}", "key 'k1' is not 32 bytes in base64"),
        ("k1:not base64!", "key 'k1' is not 32 bytes in base64"),
        (f"k1:{PAYLOAD_KEY},k1:{PAYLOAD_KEY}", "a key id is listed twice"),
        (f"bad id:{PAYLOAD_KEY}", "item 1 is not id:base64key"),
    ],
)
def test_a_malformed_payload_key_ends_the_start_in_one_line_without_the_key(
    monkeypatch: pytest.MonkeyPatch, value: str, says: str
) -> None:
    monkeypatch.setenv("PAYLOAD_KEYS", value)
    with pytest.raises(SystemExit) as raised:
        load_settings("worker")
    message = str(raised.value.code)
    assert message.startswith("worker: the settings are wrong: PAYLOAD_KEYS: ")
    assert says in message
    assert "\n" not in message
    assert PAYLOAD_KEY[:16] not in message


def test_payload_keys_are_required_unless_auth_mode_dev(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(SystemExit, match="api: PAYLOAD_KEYS is not set"):
        load_settings("api")
    with pytest.raises(ValueError, match="PAYLOAD_KEYS is not set"):
        _ = Settings().payload_key_ring
    monkeypatch.setenv("AUTH_MODE", "dev")
    assert load_settings("api").payload_key_ring == [DEV_PAYLOAD_KEY]


# --- TLS to Temporal -------------------------------------------------------------------------


def test_nothing_set_means_a_plain_connection() -> None:
    assert Settings().tls_config() is False


def test_an_api_key_alone_implies_tls() -> None:
    assert Settings(temporal_api_key=SecretStr("cloud-key")).tls_config() is True


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
