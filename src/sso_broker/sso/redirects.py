"""What the browser may be sent back to: ``return_to`` is a path on the frontend, nothing else."""

from __future__ import annotations

import re
from urllib.parse import unquote, urlsplit

MAX_RETURN_TO = 2048
# RFC 3986 path, query and fragment characters, with % only as a complete escape.
_PATH_CHARS = re.compile(r"^/(?:[A-Za-z0-9\-._~!$&'()*+,;=:@/?#]|%[0-9A-Fa-f]{2})*$")
_MAX_DECODE_ROUNDS = 4


def _dangerous(path: str) -> bool:
    """A path some browser or router could read as another origin, or as something odd."""
    if not path.startswith("/") or path.startswith(("//", "/\\")):
        return True
    if "\\" in path:
        return True
    # An encoded plain space (/search?q=a%20b) is harmless; tabs, newlines and other white
    # space are what browsers strip or routers trip over.
    return any(
        ord(char) < 0x20 or ord(char) == 0x7F or (char.isspace() and char != " ") for char in path
    )


def safe_return_to(value: str | None) -> str | None:
    """``value`` if it is a relative path on the frontend, otherwise None.

    Refused: absolute URLs, scheme-relative ``//host``, backslashes (``/\\host``), control
    characters and white space other than an encoded space (tab and newline tricks),
    anything outside RFC 3986's path characters (so no raw unicode look-alikes), and
    encodings that decode to any of those (``/%2F%2Fhost``, double encoding).
    """
    if value is None or not value or len(value) > MAX_RETURN_TO:
        return None
    if not _PATH_CHARS.fullmatch(value) or _dangerous(value):
        return None
    decoded = value
    for _ in range(_MAX_DECODE_ROUNDS):
        decoded_again = unquote(decoded)
        if _dangerous(decoded_again) or urlsplit(decoded_again).netloc:
            return None
        if decoded_again == decoded:
            break
        decoded = decoded_again
    else:
        return None  # still decoding after several rounds: nobody needs that
    parts = urlsplit(value)
    if parts.scheme or parts.netloc:
        return None
    return value
