"""The ``Prefer`` request header (RFC 7240), parsed strictly: a preference it cannot read is
ignored, never an error, and only ASCII digits make a number."""

import re

_TOKEN = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_QUOTED = r'"(?:[^"\\\x00-\x08\x0a-\x1f\x7f]|\\[\t\x20-\x7e\x80-\xff])*"'
_WORD = rf"(?:{_TOKEN}|{_QUOTED})"
# preference = token [ BWS "=" BWS word ] *( OWS ";" [ OWS parameter ] ), then "," or the end.
_PREFERENCE = re.compile(
    rf"[ \t]*({_TOKEN})(?:[ \t]*=[ \t]*({_WORD}))?"
    rf"(?:[ \t]*;(?:[ \t]*{_TOKEN}(?:[ \t]*=[ \t]*{_WORD})?)?)*[ \t]*(?:,|$)"
)
_DELTA_SECONDS = re.compile(r"[0-9]+")  # 1*DIGIT, in ASCII


def preferences(header: str | None) -> dict[str, str]:
    """Each well-formed preference of ``header`` by its lower-cased name (the first one of a
    name counts), with its value unquoted ("" when it has none). A malformed one is skipped."""
    found: dict[str, str] = {}
    text = header or ""
    position = 0
    while position < len(text):
        match = _PREFERENCE.match(text, position)
        if match is None:  # skip what cannot be read, up to the next preference
            comma = text.find(",", position)
            position = len(text) if comma < 0 else comma + 1
            continue
        name, value = match.group(1).lower(), match.group(2) or ""
        if value.startswith('"'):
            value = re.sub(r"\\(.)", r"\1", value[1:-1])
        found.setdefault(name, value)
        position = max(match.end(), position + 1)
    return found


def preferred_wait(header: str | None, most: float) -> float:
    """The ``wait`` preference in seconds, at most ``most`` (0: none, or not a number)."""
    value = preferences(header).get("wait", "")
    if not _DELTA_SECONDS.fullmatch(value):
        return 0.0
    return min(float(int(value)), most)
