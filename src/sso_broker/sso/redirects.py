"""What the browser may be sent back to: ``return_to`` is a path on the frontend, nothing else."""

from __future__ import annotations

import re
import unicodedata
from urllib.parse import unquote, urlsplit

# Kept in the login-state cookie: short enough that a few attempts fit one browser's budget
# (state.py), long enough for any dashboard path.
MAX_RETURN_TO = 512
# RFC 3986 path, query and fragment characters, with % only as a complete escape.
_PATH_CHARS = re.compile(r"^/(?:[A-Za-z0-9\-._~!$&'()*+,;=:@/?#]|%[0-9A-Fa-f]{2})*$")
_MAX_DECODE_ROUNDS = 4
_QUERY_OR_FRAGMENT = re.compile(r"[?#]")


def _has_dot_segment(path: str) -> bool:
    """A ``.`` or ``..`` segment in the path part (before any ``?`` or ``#``).

    Resolving dot segments can create a scheme-relative path: ``/..//evil.com`` and
    ``/a/..//evil.com`` resolve on the frontend to the path ``//evil.com``, which a router
    that navigates to the resolved path sends to evil.com. Browsers also read ``%2e`` as a
    dot, which the decoding rounds of :func:`safe_return_to` cover.
    """
    path_part = _QUERY_OR_FRAGMENT.split(path, maxsplit=1)[0]
    return any(segment in (".", "..") for segment in path_part.split("/"))


def _dangerous(path: str) -> bool:
    """A path some browser or router could read as another origin, or as something odd."""
    if not path.startswith("/") or path.startswith(("//", "/\\")):
        return True
    if "\\" in path or _has_dot_segment(path):
        return True
    # An encoded plain space (/search?q=a%20b) is harmless; tabs, newlines and other white
    # space are what browsers strip or routers trip over.
    return any(
        ord(char) < 0x20 or ord(char) == 0x7F or (char.isspace() and char != " ") for char in path
    )


def _leaves_origin(decoded: str) -> bool:
    """``decoded`` as it is, and after Unicode compatibility normalisation (NFKC), which some
    proxies and frameworks apply: FULLWIDTH SOLIDUS (U+FF0F) becomes ``/``, FULLWIDTH and
    SMALL REVERSE SOLIDUS (U+FF3C, U+FE68) become ``\\``, two FULLWIDTH FULL STOPs (U+FF0E)
    or a TWO DOT LEADER (U+2025) become ``..``."""
    return any(
        _dangerous(reading) or bool(urlsplit(reading).netloc)
        for reading in (decoded, unicodedata.normalize("NFKC", decoded))
    )


def safe_return_to(value: str | None) -> str | None:
    """``value`` if it is a relative path on the frontend, otherwise None.

    Refused: absolute URLs, scheme-relative ``//host``, backslashes (``/\\host``), control
    characters and white space other than an encoded space (tab and newline tricks),
    anything outside RFC 3986's path characters (so no raw unicode look-alikes), dot
    segments (``/..//host`` resolves to ``//host``), and encodings that decode, or decode
    and normalise (NFKC), to any of those (``/%2F%2Fhost``, double encoding, ``%2e%2e``,
    ``%EF%BC%8F`` for a fullwidth solidus).
    """
    if value is None or not value or len(value) > MAX_RETURN_TO:
        return None
    if not _PATH_CHARS.fullmatch(value) or _dangerous(value):
        return None
    decoded = value
    for _ in range(_MAX_DECODE_ROUNDS):
        decoded_again = unquote(decoded)
        if _leaves_origin(decoded_again):
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
