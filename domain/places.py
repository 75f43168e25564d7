"""Places (a province, a city) as dealers are matched to deliveries: by a key that ignores
case and spacing, in every script ("TEHRAN " and "tehran" are one place, so are "Straße" and
"STRASSE")."""

# The longest place name, and the longest key one may fold to: both are stored.
MAX_PLACE_CHARS = 100


def place_key(name: str) -> str:
    """The matching key of a place name. Case folding can lengthen a name ("ß" folds to
    "ss"), so a valid name can have a key too long to store: see :func:`check_place`."""
    return " ".join(name.split()).casefold()


def check_place(name: str) -> str:
    """``name`` if its key fits its column; ValueError otherwise (a validator)."""
    if len(place_key(name)) > MAX_PLACE_CHARS:
        raise ValueError(
            f"this place name is more than {MAX_PLACE_CHARS} characters once case-folded"
        )
    return name
