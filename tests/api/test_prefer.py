"""The Prefer header (RFC 7240): what is read, and what is ignored without an error."""

import pytest

from api.prefer import preferences, preferred_wait


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        ("wait=5", 5),
        ("WAIT = 3 ; lang=en", 3),
        ('wait="7"', 7),
        ("respond-async, wait=10", 10),
        ('note="a, b", wait=2', 2),
        ("wait=3600", 30),  # cut to the server's limit
        ("wait=99999999999999999999", 30),
    ],
)
def test_a_wait_in_ascii_digits_is_read(header: str, seconds: float) -> None:
    assert preferred_wait(header, 30) == seconds


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "wait",
        "wait=",
        "wait=²",  # str.isdigit() says yes; float() raised, and the API answered 500
        "wait=\u0661",  # ARABIC-INDIC DIGIT ONE
        "wait=\u0663\u0660",
        "wait=1.5",
        "wait=-1",
        "wait=+1",
        "wait=5s",
        "wait=0x10",
        'wait="5',
        "=5",
        "wait==5",
        "wait=5 5",
        "\x00wait=5",
    ],
)
def test_an_unreadable_wait_is_ignored(header: str | None) -> None:
    assert preferred_wait(header, 30) == 0


def test_one_malformed_preference_does_not_hide_the_others() -> None:
    assert preferences('x=", wait=4') == {"wait": "4"}
    assert preferences("b@d, wait=4, return=minimal") == {"wait": "4", "return": "minimal"}
    assert preferences("wait=4, wait=9") == {"wait": "4"}  # the first of a name counts
