"""What a person may type, as pydantic types: exact money, clean normalised names and ids,
phone numbers, integer counts. No I/O, no FastAPI: the workflow sandbox loads them."""

import re
import unicodedata
from decimal import Decimal
from typing import Annotated

from pydantic import (
    AfterValidator,
    BeforeValidator,
    Field,
    StrictInt,
    StringConstraints,
    WithJsonSchema,
)

from domain.places import check_place

MAX_MONEY = Decimal("9999999999.99")

# An amount written as text: positive, at most 10 digits before the point and 2 after
# ("12.50", "0.5"). Decimal() alone would also take " 12.5", "1_000", "1e2" or "١٢".
MONEY_TEXT = r"^(0*[1-9][0-9]{0,9}(\.[0-9]{1,2})?|0+\.(0[1-9]|[1-9][0-9]?))$"


def _money_text(value: object) -> object:
    if isinstance(value, str) and not re.fullmatch(MONEY_TEXT, value):
        raise ValueError("an amount is a positive number with at most 2 decimals, like '12.50'")
    return value


Money = Annotated[
    Decimal,
    BeforeValidator(_money_text),
    Field(gt=0, le=MAX_MONEY, max_digits=12, decimal_places=2),
    # What the validation above accepts, exactly, for the OpenAPI document.
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "string", "pattern": MONEY_TEXT},
                {
                    "type": "number",
                    "exclusiveMinimum": 0,
                    "maximum": float(MAX_MONEY),
                    "multipleOf": 0.01,
                },
            ],
            "examples": ["12.50"],
        },
        mode="validation",
    ),
]
# Typed text holds no control characters, no bidirectional formatting (a name shown as
# another) and no line separators; ordinary joiners (ZWNJ, ZWJ) stay allowed.
NO_CONTROL_CHARS = "^[^\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069]*$"


def _nfc(value: object) -> object:
    # One spelling per text (NFC): a combining accent is stored as the single character.
    return unicodedata.normalize("NFC", value) if isinstance(value, str) else value


# The BeforeValidator comes last, so it wraps the constrained string: the text is normalised
# before its length and pattern are checked.
Name = Annotated[
    str,
    StringConstraints(
        strip_whitespace=True, min_length=1, max_length=100, pattern=NO_CONTROL_CHARS
    ),
    BeforeValidator(_nfc),
]
# A province or city: a name whose matching key (domain.places) fits its column too.
Place = Annotated[Name, AfterValidator(check_place)]
Identifier = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=64, pattern=NO_CONTROL_CHARS),
    BeforeValidator(_nfc),
]
# A phone number: digits, spaces, parentheses and dashes, with an optional leading "+".
Phone = Annotated[
    str,
    StringConstraints(
        strip_whitespace=True, min_length=3, max_length=32, pattern=r"^\+?[0-9 ()-]+$"
    ),
]


def _integral_number(value: object) -> object:
    # JSON Schema counts 3.0 as the integer 3; anything else not an int is left to refuse.
    if isinstance(value, Decimal) and value.is_finite() and value == value.to_integral_value():
        return int(value)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


# A count: a JSON integer (3, or 3.0), never a boolean, a string or a fraction.
Count = Annotated[StrictInt, BeforeValidator(_integral_number)]
