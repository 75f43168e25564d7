"""Customer tokens: JWT HS256 (``sub`` = the customer, ``aud`` = order-saga, ``exp``), verified
against every configured secret (rotation), and the ``python -m api.auth token`` CLI."""

import base64
import json
import os
import subprocess
import sys
import warnings
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jwt
import pytest
from jwt.warnings import InsecureKeyLengthWarning
from pydantic import SecretStr

from api.auth.__main__ import main
from api.auth.tokens import (
    TOKEN_AUDIENCE,
    TOKEN_LEEWAY,
    InvalidTokenError,
    issue_customer_token,
    verify_customer_token,
)

SECRET = "unit-test-customer-token-secret-0123456789"
OLD_SECRET = "unit-test-customer-token-secret-rotated-out"
UNKNOWN_SECRET = "unit-test-customer-token-secret-nobody-has-it"
SECRETS = [SecretStr(SECRET)]
TTL = timedelta(minutes=5)
ROOT = Path(__file__).resolve().parents[2]


def claims_of(token: str) -> dict[str, Any]:
    """The token's claims, read without checking anything."""
    claims: dict[str, Any] = jwt.decode(token, options={"verify_signature": False})
    return claims


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def signed(claims: dict[str, Any], secret: str = SECRET, algorithm: str = "HS256") -> str:
    """A token made by hand, to build the malformed ones ``issue_customer_token`` never makes."""
    return jwt.encode(claims, secret, algorithm=algorithm)


def valid_claims(**changes: Any) -> dict[str, Any]:
    now = datetime.now(UTC)
    return {"sub": "c1", "aud": TOKEN_AUDIENCE, "iat": now, "exp": now + TTL, **changes}


# --- round trip ------------------------------------------------------------------------------


def test_a_token_round_trips_to_its_customer() -> None:
    token = issue_customer_token(SECRET, "c1", TTL)
    assert verify_customer_token(SECRETS, token) == "c1"


def test_a_token_is_a_hs256_jwt_for_this_api_with_an_expiry() -> None:
    now = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
    token = issue_customer_token(SECRET, "c1", TTL, now=now)
    assert jwt.get_unverified_header(token)["alg"] == "HS256"
    claims = claims_of(token)
    assert claims["sub"] == "c1"
    assert claims["aud"] == TOKEN_AUDIENCE == "order-saga"
    assert claims["iat"] == int(now.timestamp())
    assert claims["exp"] == int((now + TTL).timestamp())


@pytest.mark.parametrize(
    "customer_id",
    ["acme.eu.c1", "مشتری-۱۲۳", "Zoë.Ørsted 🚚", "a" * 64],
    ids=["dots", "persian", "accents-and-emoji", "long"],
)
def test_any_customer_id_round_trips(customer_id: str) -> None:
    token = issue_customer_token(SECRET, customer_id, TTL)
    assert token.isascii()  # an HTTP header carries it as it is
    assert verify_customer_token(SECRETS, token) == customer_id


@pytest.mark.parametrize("customer_id", ["", "  "])
def test_no_token_without_a_customer_id(customer_id: str) -> None:
    with pytest.raises(ValueError, match="customer id"):
        issue_customer_token(SECRET, customer_id, TTL)


# --- expiry ----------------------------------------------------------------------------------


def test_an_expired_token_is_refused() -> None:
    issued = datetime.now(UTC) - timedelta(hours=2)
    token = issue_customer_token(SECRET, "c1", timedelta(hours=1), now=issued)
    with pytest.raises(InvalidTokenError, match="expired"):
        verify_customer_token(SECRETS, token)


def test_a_token_just_past_its_expiry_is_accepted_within_the_leeway() -> None:
    assert timedelta(seconds=30) == TOKEN_LEEWAY
    # Expired 10 s ago: within the 30 s allowed for clocks that differ.
    issued = datetime.now(UTC) - TTL - timedelta(seconds=10)
    token = issue_customer_token(SECRET, "c1", TTL, now=issued)
    assert verify_customer_token(SECRETS, token) == "c1"


def test_a_token_expired_beyond_the_leeway_is_refused() -> None:
    issued = datetime.now(UTC) - TTL - timedelta(seconds=60)
    token = issue_customer_token(SECRET, "c1", TTL, now=issued)
    with pytest.raises(InvalidTokenError, match="expired"):
        verify_customer_token(SECRETS, token)


def test_a_token_without_an_expiry_is_refused() -> None:
    claims = valid_claims()
    del claims["exp"]
    with pytest.raises(InvalidTokenError, match="exp"):
        verify_customer_token(SECRETS, signed(claims))


# --- rotation --------------------------------------------------------------------------------


def test_a_token_of_any_configured_secret_is_accepted() -> None:
    rotating = [SecretStr(SECRET), SecretStr(OLD_SECRET)]
    for secret in (SECRET, OLD_SECRET):
        token = issue_customer_token(secret, "c1", TTL)
        assert verify_customer_token(rotating, token) == "c1"


def test_a_token_of_a_secret_that_is_not_configured_is_refused() -> None:
    token = issue_customer_token(UNKNOWN_SECRET, "c1", TTL)
    with pytest.raises(InvalidTokenError, match="unknown signature"):
        verify_customer_token([SecretStr(SECRET), SecretStr(OLD_SECRET)], token)
    # Once the old secret is dropped, its tokens stop working.
    old = issue_customer_token(OLD_SECRET, "c1", TTL)
    with pytest.raises(InvalidTokenError):
        verify_customer_token(SECRETS, old)


def test_no_secret_configured_accepts_nothing() -> None:
    with pytest.raises(InvalidTokenError):
        verify_customer_token([], issue_customer_token(SECRET, "c1", TTL))


# --- forgeries -------------------------------------------------------------------------------


def another_customer_same_signature(token: str) -> str:
    header, payload, signature = token.split(".")
    claims = json.loads(unb64(payload))
    claims["sub"] = "c2"
    return ".".join([header, b64(json.dumps(claims).encode()), signature])


def signature_changed(token: str) -> str:
    header, payload, signature = token.split(".")
    middle = len(signature) // 2  # not the last character: its low bits are padding
    flipped = "A" if signature[middle] != "A" else "B"
    return ".".join([header, payload, signature[:middle] + flipped + signature[middle + 1 :]])


def alg_none(_token: str) -> str:
    header = b64(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    claims = {"sub": "c1", "aud": TOKEN_AUDIENCE, "exp": int(datetime.now(UTC).timestamp()) + 60}
    return f"{header}.{b64(json.dumps(claims).encode())}."


def hs512_with_the_right_secret(_token: str) -> str:
    with warnings.catch_warnings():  # PyJWT would rather have a 64-byte key for HS512
        warnings.simplefilter("ignore", InsecureKeyLengthWarning)
        return signed(valid_claims(), algorithm="HS512")


FORGERIES: dict[str, Callable[[str], str]] = {
    "another customer, same signature": another_customer_same_signature,
    "signature changed": signature_changed,
    "signature removed": lambda t: t.rsplit(".", 1)[0] + ".",
    "signature of another token": lambda t: (
        t.rsplit(".", 1)[0] + "." + issue_customer_token(SECRET, "c2", TTL).rsplit(".", 1)[1]
    ),
    "alg none": alg_none,
    "alg none (PyJWT)": lambda t: jwt.encode(valid_claims(), "", algorithm="none"),
    "HS512 with the right secret": hs512_with_the_right_secret,
    "wrong audience": lambda t: signed(valid_claims(aud="another-service")),
    "no audience": lambda t: signed({k: v for k, v in valid_claims().items() if k != "aud"}),
    "no subject": lambda t: signed({k: v for k, v in valid_claims().items() if k != "sub"}),
    "empty subject": lambda t: signed(valid_claims(sub="")),
    "subject not a string": lambda t: signed(valid_claims(sub=42)),
    "not yet valid": lambda t: signed(valid_claims(nbf=datetime.now(UTC) + timedelta(minutes=10))),
    "empty": lambda t: "",
    "not a jwt": lambda t: "c1.0123456789abcdef",
    "garbage segments": lambda t: "a.b.c",
    "upper case": lambda t: t.upper(),
    "truncated": lambda t: t[:-5],
    "not ascii": lambda t: t[:-1] + "\u00e9",
}


@pytest.mark.parametrize("forge", FORGERIES.values(), ids=FORGERIES.keys())
def test_a_forged_or_malformed_token_is_refused(forge: Callable[[str], str]) -> None:
    token = forge(issue_customer_token(SECRET, "c1", TTL))
    with pytest.raises(InvalidTokenError) as raised:
        verify_customer_token(SECRETS, token)
    assert SECRET not in str(raised.value)


# --- the CLI ---------------------------------------------------------------------------------


def test_the_cli_prints_a_token_signed_with_the_first_secret(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CUSTOMER_TOKEN_SECRETS", f"{SECRET},{OLD_SECRET}")
    assert main(["token", "c1"]) == 0
    token = capsys.readouterr().out.strip()
    assert verify_customer_token(SECRETS, token) == "c1"  # the first secret alone verifies it
    claims = claims_of(token)
    assert claims["exp"] - claims["iat"] == 3600  # CUSTOMER_TOKEN_TTL_SECONDS' default


def test_the_cli_takes_the_ttl_from_the_setting_or_the_option(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CUSTOMER_TOKEN_SECRETS", SECRET)
    monkeypatch.setenv("CUSTOMER_TOKEN_TTL_SECONDS", "120")
    assert main(["token", "c1"]) == 0
    claims = claims_of(capsys.readouterr().out.strip())
    assert claims["exp"] - claims["iat"] == 120
    assert main(["token", "c1", "--ttl", "60"]) == 0
    claims = claims_of(capsys.readouterr().out.strip())
    assert claims["exp"] - claims["iat"] == 60


@pytest.mark.parametrize("ttl", ["0", "-60", str(367 * 24 * 3600), "soon"])
def test_the_cli_refuses_a_lifetime_out_of_range(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], ttl: str
) -> None:
    monkeypatch.setenv("CUSTOMER_TOKEN_SECRETS", SECRET)
    with pytest.raises(SystemExit) as raised:
        main(["token", "c1", "--ttl", ttl])
    assert raised.value.code == 2  # argparse's usage error
    assert capsys.readouterr().out == ""  # no token, not even an expired one


def test_the_cli_refuses_without_secrets(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["token", "c1"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "CUSTOMER_TOKEN_SECRETS is not set" in captured.err


def test_the_cli_runs_as_a_module(tmp_path: Path) -> None:
    # The environment is already clean of settings (conftest); the cwd has no .env file.
    env = {**os.environ, "CUSTOMER_TOKEN_SECRETS": SECRET, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-m", "api.auth", "token", "acme.eu.c1"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert verify_customer_token(SECRETS, done.stdout.strip()) == "acme.eu.c1"
