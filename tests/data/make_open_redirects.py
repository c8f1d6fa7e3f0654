"""Writes ``open_redirects.jsonl``: open-redirect payloads for ``return_to``.

Run from anywhere: ``python tests/data/make_open_redirects.py`` (``--check`` only compares).
The output is deterministic: no randomness, sections in a fixed order, duplicates dropped
keeping the first. ``tests/sso/test_open_redirects.py`` checks the committed file matches.

Format: JSON Lines, UTF-8, one JSON string per line (the payload, exactly as a browser or an
attacker would put it in ``?return_to=``; httpx encodes it for the request). Characters that
cannot stand on a line or cannot be seen (controls, CR, LF, NUL, line and paragraph
separators, format characters, non-ASCII spaces) are written as JSON escapes (``\\t``,
``\\u2028``); everything else, unicode look-alikes included, is written as itself.

The payloads target ``evil.com`` (and a few spellings of it); the frontend under attack is
``https://app.example.com``, as in the test settings.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from urllib.parse import quote

OUTPUT = Path(__file__).with_name("open_redirects.jsonl")

FRONT = "app.example.com"
EVIL = "evil.com"
MAX_RETURN_TO = 512  # sso_broker.sso.redirects.MAX_RETURN_TO: probe both sides of it


def _encode(text: str, rounds: int) -> str:
    """``text`` percent-encoded ``rounds`` times (every character, slashes included)."""
    for _ in range(rounds):
        text = quote(text, safe="")
    return text


def _hex_all(text: str) -> str:
    """Every character percent-encoded, even letters (``%6A%61%76%61``)."""
    return "".join(f"%{byte:02X}" for byte in text.encode())


# --- absolute URLs ----------------------------------------------------------------------------


SCHEMES = ["http", "https", "HTTP", "HTTPS", "HtTpS", "hTtP", "ftp", "FTP", "ws", "wss", "file"]
SCHEME_SEPARATORS = [
    "://",
    ":/",
    ":",
    ":///",
    ":////",
    ":\\\\",
    ":/\\",
    ":\\/",
    ":\\",
    "://\\",
    ":%2F%2F",
    "%3A%2F%2F",
]
ABSOLUTE_TAILS = ["", "/", "/reports", "?next=/", "#/reports", "@" + FRONT]
EVIL_HOSTS = [
    "evil.com.",
    "EVIL.COM",
    "evil.com:443",
    "evil.com:8443/x",
    "127.0.0.1",
    "2130706433",
    "0x7f000001",
    "0177.0.0.1",
    "127.1",
    "[::1]",
    "[::ffff:127.0.0.1]",
    "localhost",
    "evil.com%2F",
    "evil.com%23@" + FRONT,
    "xn--e1awd7f.com",
    "evil.com\\@" + FRONT,
    "evil.com#@" + FRONT,
    "evil.com?@" + FRONT,
    "evil.com;@" + FRONT,
    "evil.com/" + FRONT,
    "evil.com/.." + FRONT,
]


def absolute_urls() -> Iterator[str]:
    for scheme in SCHEMES:
        for separator in SCHEME_SEPARATORS:
            yield f"{scheme}{separator}{EVIL}"
    for scheme in ("https", "http"):
        for tail in ABSOLUTE_TAILS:
            yield f"{scheme}://{EVIL}{tail}"
        for host in EVIL_HOSTS:
            yield f"{scheme}://{host}"
    yield from [
        "https://evil.com/https://app.example.com/",
        "https://evil.com/?https://app.example.com",
        "https://evil.com/#https://app.example.com",
        "https://evil.com%252F@app.example.com",
        "gopher://evil.com:70/",
        "ldap://evil.com/",
        "sftp://evil.com/",
        "ssh://evil.com/",
        "git://evil.com/",
        "irc://evil.com/",
        "telnet://evil.com/",
        "https%3A%2F%2Fevil.com",
        "https%253A%252F%252Fevil.com",
        "%68ttps://evil.com",
        "%68%74%74%70%73%3a%2f%2fevil.com",
        "h%0Attps://evil.com",
        "ht\ttps://evil.com",
        "https:/\u0009/evil.com",
        "https:/%09/evil.com",
        "/https://evil.com",
        "/https:/%5cevil.com/",
        "/https://%09/evil.com",
        "/https://%5cevil.com",
        "/https:///evil.com/%2e%2e",
        "/https://evil.com/%2e%2e",
        "/https:evil.com",
        "/http://evil.com",
        "/%68ttp://evil.com",
    ]


# --- script and other dangerous schemes -------------------------------------------------------


JS = "javascript:alert(1)"


def script_schemes() -> Iterator[str]:
    yield from [
        JS,
        "javascript:alert(document.domain)",
        "JAVASCRIPT:alert(1)",
        "JaVaScRiPt:alert(1)",
        "javascript://%0Aalert(1)",
        "javascript://evil.com/%0Aalert(1)",
        "javascript://app.example.com/%0Aalert(1)",
        "javascript://%250Aalert(1)",
        "javascript:alert(1)//",
        "javascript:/*--></title></style></textarea></script>*/alert(1)",
        "javascript%3Aalert(1)",
        "javascript%253Aalert(1)",
        "javascript&colon;alert(1)",
        "&#106;avascript:alert(1)",
        "&#x6A;avascript:alert(1)",
        "java&#x09;script:alert(1)",
        "\\j\\av\\a\\s\\cr\\i\\pt\\:\\a\\l\\ert\\(1\\)",
        "java%0d%0ascript%0d%0a:alert(0)",
        "j%0d%0aava%0d%0aas%0d%0acrip%0d%0at%0d%0a:confirm`0`",
        "<>javascript:alert(1);",
        "/javascript:alert(1)",
        "//javascript:alert(1)",
        "/%5Cjavascript:alert(1)",
        "/%2F%2Fjavascript:alert(1)",
        "%6A%61%76%61%73%63%72%69%70%74:alert(1)",
        _hex_all("javascript") + "%3Aalert(1)",
        _encode(JS, 2),
        _encode(JS, 3),
        "\u0441avascript:alert(1)",
        "\uff4avascript:alert(1)",
        "javascript\uff1aalert(1)",
        "jav\u0130script:alert(1)",
        "data:text/html,<script>alert(1)</script>",
        "data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==",
        "DATA:text/html,<script>alert(1)</script>",
        "DaTa:text/html,evil",
        "data:,evil",
        "data:text/html%2Cevil",
        "data%3Atext/html,evil",
        "/data:text/html,evil",
        "vbscript:msgbox(1)",
        "VBSCRIPT:msgbox(1)",
        "VbScRiPt:msgbox(1)",
        "vbscript%3Amsgbox(1)",
        "blob:https://evil.com/0b6f",
        "filesystem:https://evil.com/temporary/x",
        "view-source:https://evil.com",
        "about:blank",
        "intent://evil.com#Intent;scheme=https;end",
        "mailto:a@evil.com",
        "tel:+15555550100",
        "chrome://settings",
        "jar:https://evil.com/x.jar!/",
        "ms-settings:",
        "x-javascript:alert(1)",
    ]
    for character in ("\t", "\n", "\r", "\x00", " ", "\x0b", "\x0c", "\u00a0", "\u200b"):
        yield f"java{character}script:alert(1)"
        yield f"{character}javascript:alert(1)"
        yield f"javascript{character}:alert(1)"
    for escape in ("%09", "%0A", "%0D", "%00", "%20"):
        yield f"java{escape}script:alert(1)"
        yield f"{escape}javascript:alert(1)"


# --- scheme-relative and backslash spellings --------------------------------------------------


RELATIVE_PREFIXES = [
    "//",
    "///",
    "////",
    "/////",
    "/\\",
    "\\\\",
    "\\/",
    "/\\/",
    "\\/\\",
    "/\\\\",
    "\\//",
    "//\\",
    "\\\\\\",
    "\\",
    "/\\/\\/",
    "/./\\",
    "/.\\",
    "/;/",
    "/;\\",
]
RELATIVE_HOSTS = [
    EVIL,
    EVIL + "/",
    EVIL + "/%2e%2e",
    EVIL + "/%2f..",
    EVIL + "/%2e%2e%2f",
    EVIL + "//",
    EVIL + "@" + FRONT,
    FRONT + "@" + EVIL,
    FRONT + ":443@" + EVIL,
    EVIL + "\\@" + FRONT,
    EVIL + "#" + FRONT,
    EVIL + "?" + FRONT,
    EVIL + ";@" + FRONT,
    "\\;@" + EVIL,
    "%09/" + EVIL,
    "%5c" + EVIL,
]


def scheme_relative() -> Iterator[str]:
    for prefix in RELATIVE_PREFIXES:
        for host in RELATIVE_HOSTS:
            yield prefix + host
    yield from ["//", "///", "\\\\", "/\\", "//:", "//@", "//?", "//#", "//.", "//%00"]


# --- percent-encoded slashes and backslashes ---------------------------------------------------


# (slash, backslash), from a plain escape to triple encoding and broken or overlong forms.
ENCODED_SLASHES = [
    ("%2F", "%5C"),
    ("%2f", "%5c"),
    ("%252F", "%255C"),
    ("%252f", "%255c"),
    ("%25252F", "%25255C"),
    ("%2525252F", "%2525255C"),
    ("%25%32%46", "%25%35%43"),
    ("%25%32%66", "%25%35%63"),
    ("%2525%32%46", "%2525%35%43"),
    ("%%32%46", "%%35%43"),
    ("%u002F", "%u005C"),
    ("%C0%AF", "%C1%9C"),
    ("%E0%80%AF", "%E0%81%9C"),
    ("%EF%BC%8F", "%EF%BC%BC"),
    ("%E2%88%95", "%E2%88%96"),
    ("%E2%81%84", "%EF%B9%A8"),
]
ENCODED_PATTERNS = [
    "/{s}{s}evil.com",
    "/{s}{b}evil.com",
    "/{b}{s}evil.com",
    "/{b}{b}evil.com",
    "/{b}evil.com",
    "/{s}/evil.com",
    "/{b}/evil.com",
    "/{s}{s}{s}evil.com/",
    "{s}{s}evil.com",
    "{s}evil.com",
    "{b}{b}evil.com",
    "//{s}evil.com",
    "/{s}{s}evil.com/{s}..",
    "https:{s}{s}evil.com",
]


def encoded_slashes() -> Iterator[str]:
    for slash, backslash in ENCODED_SLASHES:
        for pattern in ENCODED_PATTERNS:
            yield pattern.format(s=slash, b=backslash)
    yield from [
        "/%2f%2f%2fevil.com%2f%2e%2e",
        "%2f%2f%2fevil.com",
        "%5c%5cevil.com",
        "/%2F/%2F/evil.com",
        "/%2F%2F" + _encode("evil.com", 1),
        "/" + _encode("//evil.com", 1),
        "/" + _encode("//evil.com", 2),
        "/" + _encode("//evil.com", 3),
        "/" + _encode("\\\\evil.com", 2),
        _encode("//evil.com", 1),
        _encode("//evil.com", 2),
        _encode("https://evil.com", 1),
        _encode("https://evil.com", 2),
        _encode("https://evil.com", 3),
        "/" + _hex_all("/evil.com"),
        "/" + _hex_all("\\evil.com"),
        "/%2F%252F%25252Fevil.com",
        "/%2%46%2%46evil.com",
        "/%%2F%2Fevil.com",
        "/%2F%2",
        "/%",
        "/%%",
        "/%zz",
        "/%g0",
        "/%2",
    ]


# --- userinfo tricks and the frontend host spelled differently ---------------------------------


def userinfo_and_host_spellings() -> Iterator[str]:
    yield from [
        "https://app.example.com@evil.com",
        "https://app.example.com@evil.com/",
        "https://app.example.com:443@evil.com",
        "https://app.example.com:@evil.com",
        "https://app.example.com:pass@evil.com",
        "https://app.example.com%40evil.com",
        "https://app.example.com%2540evil.com",
        "https://app.example.com\\@evil.com",
        "https://app.example.com%5C@evil.com",
        "https://app.example.com%2F@evil.com",
        "https://app.example.com%00@evil.com",
        "https://app.example.com%09@evil.com",
        "https://app.example.com#@evil.com",
        "https://app.example.com?@evil.com",
        "https://app.example.com.evil.com",
        "https://app.example.com.evil.com/",
        "https://app.example.com%2Eevil.com",
        "https://app.example.com%00.evil.com",
        "https://app.example.com%2F.evil.com",
        "https://app.example.com\\.evil.com",
        "https://app.example.com&.evil.com",
        "https://app.example.com;.evil.com",
        "https://app.example.comevil.com",
        "https://app.example.com-evil.com",
        "https://app.example.com_evil.com",
        "https://evil.com@app.example.com",
        "https://evil.com\\@app.example.com",
        "https://evil.com#@app.example.com",
        "https://evil.com?@app.example.com",
        "https://evil.com/.app.example.com",
        "https://evil.com/app.example.com",
        "https://evilapp.example.com",
        "https://app-example.com",
        "https://app.example.co",
        "https://app.example.com.",
        "https://app.example.com./",
        "https://APP.example.com",
        "https://APP.EXAMPLE.COM/",
        "https://App.Example.Com/reports",
        "HTTPS://APP.EXAMPLE.COM",
        "https://app.example.com",
        "https://app.example.com/",
        "https://app.example.com/reports",
        "https://app.example.com:443/",
        "https://app.example.com:443",
        "https://app.example.com:8443/",
        "https://app.example.com:0/",
        "https://app.example.com:80",
        "http://app.example.com",
        "http://app.example.com/reports",
        "http://app.example.com:443/",
        "ftp://app.example.com/",
        "ws://app.example.com/",
        "wss://app.example.com/",
        "//app.example.com",
        "//app.example.com/reports",
        "//APP.EXAMPLE.COM/",
        "///app.example.com",
        "\\\\app.example.com",
        "/\\app.example.com",
        "https:app.example.com",
        "https:/app.example.com",
        "https:///app.example.com",
        "https://user:pass@app.example.com/",
        "https://@app.example.com/",
        "https://app%2Eexample.com",
        "https://app.example%2Ecom",
        "https://%61pp.example.com",
        "https://app.example.com%E3%80%82evil.com",
        "https://app.example.com\u3002evil.com",
        "https://app.example.com\uff0eevil.com",
        "https://app.example.com\u2024evil.com",
        "https://\u0430pp.example.com",
        "https://app.ex\u0430mple.com",
        "https://xn--pp-7kc.example.com",
        "https://\u0251pp.example.com",
        "https://app.example.\u0441om",
        "https://app\u2024example\u2024com",
        "https://[::ffff:app.example.com]",
        "https://evil.com?app.example.com",
        "https://evil.com#app.example.com",
        "https://evil.com\\app.example.com",
        "https://evil.com%23.app.example.com",
        "https://evil.com%3F.app.example.com",
        "@evil.com",
        "@app.example.com",
        ":@evil.com",
        "/@evil.com",
        "/@evil.com/",
        "/:@evil.com",
        "/user:pass@evil.com",
        "/app.example.com@evil.com",
        "/%40evil.com",
        "/%2540evil.com",
        "evil.com",
        "app.example.com",
        "app.example.com.evil.com",
        "app.example.com@evil.com",
        ".evil.com",
        "/.evil.com",
        "/evil.com",
        "/evil.com/",
        "/evil.com:443",
    ]


# --- unicode look-alikes ----------------------------------------------------------------------


SLASH_LOOKALIKES = [
    "\uff0f",  # FULLWIDTH SOLIDUS, NFKC: /
    "\u2215",  # DIVISION SLASH
    "\u2044",  # FRACTION SLASH
    "\u29f8",  # BIG SOLIDUS
    "\u2571",  # BOX DRAWINGS LIGHT DIAGONAL
    "\u2afd",  # DOUBLE SOLIDUS OPERATOR
    "\u27cb",  # MATHEMATICAL RISING DIAGONAL
    "\u0338",  # COMBINING LONG SOLIDUS OVERLAY
    "\u3033",  # VERTICAL KANA REPEAT MARK UPPER HALF
]
BACKSLASH_LOOKALIKES = [
    "\uff3c",  # FULLWIDTH REVERSE SOLIDUS, NFKC: backslash
    "\ufe68",  # SMALL REVERSE SOLIDUS, NFKC: backslash
    "\u29f5",  # REVERSE SOLIDUS OPERATOR
    "\u2216",  # SET MINUS
    "\u27cd",  # MATHEMATICAL FALLING DIAGONAL
]
DOT_LOOKALIKES = [
    "\u3002",  # IDEOGRAPHIC FULL STOP: a dot in a host to IDNA
    "\uff0e",  # FULLWIDTH FULL STOP
    "\uff61",  # HALFWIDTH IDEOGRAPHIC FULL STOP
    "\u2024",  # ONE DOT LEADER, NFKC: .
]
LOOKALIKE_PATTERNS = [
    "/{c}{c}evil.com",
    "{c}{c}evil.com",
    "/{c}evil.com",
    "/{c}/evil.com",
    "https:{c}{c}evil.com",
]


def _utf8_escaped(text: str) -> str:
    return quote(text, safe="/:@")


def unicode_lookalikes() -> Iterator[str]:
    for character in SLASH_LOOKALIKES + BACKSLASH_LOOKALIKES:
        for pattern in LOOKALIKE_PATTERNS:
            payload = pattern.format(c=character)
            yield payload
            yield _utf8_escaped(payload)
    for dot in DOT_LOOKALIKES:
        yield f"//evil{dot}com"
        yield f"https://evil{dot}com"
        yield f"/{dot}{dot}//evil.com"
        yield _utf8_escaped(f"/{dot}{dot}//evil.com")
        yield _utf8_escaped(f"/{dot}{dot}/\uff0fevil.com")
        yield f"{dot}/evil.com"
    yield from [
        "/\u2025//evil.com",  # TWO DOT LEADER, NFKC: ..
        "/a/\u2025//evil.com",
        _utf8_escaped("/a/\u2025//evil.com"),
        _utf8_escaped("/a/\u2025/\uff0fevil.com"),
        "/\u3031evil.com",
        "\u3031evil.com",
        "\u3035evil.com",
        "\u309devil.com",
        "\u30fcevil.com",
        "\uff70evil.com",
        "/\u30fcevil.com",
        "/\u202e//moc.live",
        "/\u202e/moc.live",
        "/\u200f//evil.com",
        "/\u2060//evil.com",
        "/\u00ad//evil.com",
        "/\u034f//evil.com",
        "/\ufe0f//evil.com",
        "/\U000e0020//evil.com",
        "/\u0435vil.com",
        "//\u0435vil.com",
        "https://\u0435vil.com",
        "/r\u00e9ports",
        "/reports/\u2713",
        "/%E2%9C%93",
        "/%C3%A9",
        "/%EF%BF%BD",
        "/%ED%A0%80",  # an encoded lone surrogate
        "/%F0%9F%98%80",
        "/%E2%80%AE//moc.live",
        "/%E5%98%8A%E5%98%8DLocation:%20https://evil.com",
        "/\u560a\u560dLocation: https://evil.com",
        "/%EF%BC%8F%EF%BC%8F%EF%BC%8Fevil.com",
        "/%EF%BC%BC%EF%BC%BCevil.com",
        "/%EF%BC%8E%EF%BC%8E/%EF%BC%8Fevil.com",
        "/%E2%80%A4%E2%80%A4//evil.com",
    ]


# --- white space and control characters -------------------------------------------------------


WHITESPACE = [
    "\t",
    "\n",
    "\r",
    "\r\n",
    "\x00",
    "\x01",
    "\x08",
    "\x0b",
    "\x0c",
    "\x1b",
    "\x1f",
    "\x7f",
    " ",
    "\u0085",
    "\u00a0",
    "\u1680",
    "\u180e",
    "\u2000",
    "\u200b",
    "\u200e",
    "\u2028",
    "\u2029",
    "\u202f",
    "\u205f",
    "\u3000",
    "\ufeff",
]
WHITESPACE_PATTERNS = [
    "/{c}/evil.com",
    "{c}//evil.com",
    "/{c}\\evil.com",
    "/\\{c}evil.com",
    "//{c}evil.com",
    "/{c}{c}/evil.com",
    "{c}https://evil.com",
    "/reports{c}",
]
ENCODED_WHITESPACE_PATTERNS = [
    "/{e}/evil.com",
    "/{e}{e}/evil.com",
    "/{e}\\evil.com",
    "{e}//evil.com",
    "/%2F{e}evil.com",
]


def whitespace_and_controls() -> Iterator[str]:
    for character in WHITESPACE:
        for pattern in WHITESPACE_PATTERNS:
            yield pattern.format(c=character)
        for rounds in (1, 2):
            escaped = _encode(character, rounds)
            for pattern in ENCODED_WHITESPACE_PATTERNS:
                yield pattern.format(e=escaped)
    yield from [
        " //evil.com",
        "  //evil.com",
        " /\\evil.com",
        " https://evil.com",
        "   /reports",
        " /reports",
        "\t\n\r//evil.com",
        "\x00//evil.com",
        "\x00\x01\x02 //evil.com",
        "//evil.com\x00",
        "/\t/\t/evil.com",
        "/\n\\evil.com",
        "/\r\nLocation: https://evil.com",
        "/\r\nSet-Cookie: session=evil",
        "/%0d%0aLocation:%20https://evil.com",
        "/%0D%0ASet-Cookie:%20session=evil",
        "/%250d%250aLocation:%20https://evil.com",
        "/%0aLocation:%20https://evil.com",
        "/%0dLocation:%20https://evil.com",
        "/reports%0d%0a%0d%0a<script>alert(1)</script>",
        "/%20/evil.com",
        "/%20%2F/evil.com",
        "/+/evil.com",
        "/reports?q=a%20b",
        "/reports?q=a+b",
        "/%09",
        "/%00",
        "/%7F",
        "/%7f/evil.com",
        "/%C2%A0/evil.com",
        "/%E2%80%A8/evil.com",
        "/%E3%80%80/evil.com",
        "/%EF%BB%BF/evil.com",
        "/%C2%85/evil.com",
    ]


# --- path traversal toward another host -------------------------------------------------------


DOTS = [
    (".", "."),
    ("%2e", "%2e"),
    ("%2E", "%2E"),
    (".", "%2e"),
    ("%2e", "."),
    ("%252e", "%252e"),
    ("%25252e", "%25252e"),
    ("%25%32%65", "%25%32%65"),
    ("%u002e", "%u002e"),
    ("%c0%ae", "%c0%ae"),
    ("%e0%80%ae", "%e0%80%ae"),
]
TRAVERSAL_PATTERNS = [
    "/{d}//evil.com",
    "/{d}/\\evil.com",
    "/{d}%2f%2fevil.com",
    "/{d}%5c%5cevil.com",
    "/a/{d}//evil.com",
    "/{d}/{d}//evil.com",
    "/a/b/{d}/{d}//evil.com",
    "/{o}//evil.com",
]


def traversal() -> Iterator[str]:
    for first, second in DOTS:
        for pattern in TRAVERSAL_PATTERNS:
            yield pattern.format(d=first + second, o=first)
    yield from [
        "/..//evil.com",
        "/../..//evil.com",
        "/.//evil.com",
        "/././/evil.com",
        "/a/..//evil.com",
        "/a/.././/evil.com",
        "/a/./..//evil.com",
        "/a/b/../..//evil.com",
        "/a/b/c/../../..//evil.com",
        "/reports/..//evil.com",
        "/reports/../..//evil.com/",
        "/..//evil.com/reports?x=1#y",
        "/.%2e/%2e%2e//evil.com",
        "/%2e%2e//evil.com",
        "/%2e%2e%2f%2fevil.com",
        "/%2e%2e%2f%2f%2fevil.com",
        "/..%2f%2fevil.com",
        "/..%2F%2Fevil.com",
        "/..%5c%5cevil.com",
        "/..%252f%252fevil.com",
        "/%252e%252e//evil.com",
        "/%252e%252e%252f%252fevil.com",
        "/a%2f..%2f%2fevil.com",
        "/a%3F/../..//evil.com",
        "/a%23/../..//evil.com",
        "/a;/../..//evil.com",
        "/..;//evil.com",
        "/..;/..;//evil.com",
        "/.;//evil.com",
        "/..\\/evil.com",
        "/../\\evil.com",
        "/./\\evil.com",
        "/..%00//evil.com",
        "/..%20//evil.com",
        "/.. //evil.com",
        "/..\t//evil.com",
        "/../../../evil.com",
        "/../evil.com",
        "/./evil.com",
        "/a/../evil.com",
        "/..",
        "/.",
        "/../",
        "/%2e%2e",
        "/%2e%2e/",
        "/...//evil.com",
        "/..../evil.com",
        "/.../.../evil.com",
        "/.evil.com//x",
        "/..evil.com",
        "/..%2fevil.com",
        "/x/..%2f..%2f%2fevil.com",
        "/x/%2e%2e%2f%2e%2e%2f%2f%2fevil.com",
        "/x/%2e./%2e.//evil.com",
        "/x/.%2E/.%2E//evil.com",
        "/%2e/%2fevil.com",
        "/%2e//evil.com",
        "/%2e%2f%2fevil.com",
        "../evil.com",
        "..//evil.com",
        "./evil.com",
        ".//evil.com",
        "..\\evil.com",
        "%2e%2e//evil.com",
        "%2e%2e%2f%2fevil.com",
    ]


# --- very long values -------------------------------------------------------------------------


def long_values() -> Iterator[str]:
    yield "/" + "a" * (MAX_RETURN_TO - 1)  # exactly at the limit
    yield "/" + "a" * MAX_RETURN_TO  # one over
    yield "/" + "a" * 3000
    yield "/" + "a" * 100_000
    yield "//evil.com/" + "a" * 3000
    yield "https://evil.com/" + "a" * 3000
    yield "/" + "a/" * 1000 + "../" * 1000 + "/evil.com"
    yield "/" + "a/" * 300 + "../" * 301 + "/evil.com"
    yield "/" + "./" * 600 + "/evil.com"
    yield "/" + "../" * 600 + "/evil.com"
    yield "/" + "%2e%2e/" * 200 + "/evil.com"
    yield "/" + "%2F" * 600 + "evil.com"
    yield "/" + "%25" * 600 + "2F%2Fevil.com"
    yield "/" + "a" * (MAX_RETURN_TO - 48) + "%2F%2Fevil.com"
    yield "/" + "a" * (MAX_RETURN_TO - 18) + "/..//evil.com"
    yield "/" + "a" * (MAX_RETURN_TO - 8) + "\\evil"
    yield "/" + "%61" * ((MAX_RETURN_TO - 2) // 3)
    yield "/reports?q=" + "x" * (MAX_RETURN_TO - 18)
    yield "/reports#" + "x" * (MAX_RETURN_TO - 18)
    yield "/" + "\u00e9" * (MAX_RETURN_TO - 1)
    yield "/" + "\t" * 2000 + "/evil.com"
    yield " " * 2000 + "//evil.com"
    yield "/" + "/" * 5000 + "evil.com"
    yield "javascript:" + "/" * 3000 + "alert(1)"


# --- query and fragment tricks ----------------------------------------------------------------


def query_and_fragment() -> Iterator[str]:
    yield from [
        "?next=//evil.com",
        "#//evil.com",
        "?//evil.com",
        "#https://evil.com",
        "?https://evil.com",
        "#@evil.com",
        "?@evil.com",
        "#",
        "?",
        "/?next=//evil.com",
        "/#//evil.com",
        "/?//evil.com",
        "/#https://evil.com",
        "/?url=https://evil.com",
        "/?redirect=%2F%2Fevil.com",
        "/?redirect=%252F%252Fevil.com",
        "/reports?return_to=//evil.com",
        "/reports?return_to=https%3A%2F%2Fevil.com",
        "/reports#return_to=//evil.com",
        "/?@evil.com",
        "/#@evil.com",
        "/?a=b#//evil.com",
        "/%3F//evil.com",
        "/%3f%2f%2fevil.com",
        "/%23//evil.com",
        "/%23%2F%2Fevil.com",
        "/?\\evil.com",
        "/#\\evil.com",
        "/?%5Cevil.com",
        "/?next=/\\evil.com",
        "/??//evil.com",
        "/##//evil.com",
        "/?#//evil.com",
        "/#?//evil.com",
        "/reports?tab=summary&next=//evil.com",
        "/reports?tab=summary&range=7d",
        "/reports;jsessionid=1?x=//evil.com",
        "/sso/complete?code=stolen&return_to=//evil.com",
        "/sso/error?error=//evil.com",
        "/sso/logged-out#//evil.com",
    ]


# --- plain paths, kept as controls (these must survive) ---------------------------------------


def plain_paths() -> Iterator[str]:
    yield from [
        "/",
        "/reports",
        "/reports/2024/q1",
        "/reports?tab=summary",
        "/a/b#section-2",
        "/dashboard/%E2%9C%93",
        "/users/~admin",
        "/a:b/c@d",
        "/search?q=a+b",
        "/search?q=a%20b",
        "/projects/42",
        "/evil.com",
        "/http:evil.com",
        "/a//b",
        "/a/b/",
        "/.well-known/x",
        "/a.b/c..d/...e",
    ]


# --- payloads from public open-redirect lists, as they are written there ----------------------


def public_lists() -> Iterator[str]:
    yield from [
        "/%09/evil.com",
        "/%2f%2fevil.com",
        "/%2f%2f%2fevil.com%2f%2e%2e",
        "/%5cevil.com",
        "//%09/evil.com",
        "//%5cevil.com",
        "///%09/evil.com",
        "///%5cevil.com",
        "////%09/evil.com",
        "////%5cevil.com",
        "/////evil.com/",
        "////\\;@evil.com",
        "////evil.com/%2e%2e",
        "////evil.com/%2e%2e%2f",
        "////evil.com/%2f%2e%2e",
        "////evil.com/%2f..",
        "////evil.com//",
        "///\\;@evil.com",
        "///evil.com/%2f..",
        "///app.example.com@evil.com/%2f..",
        "//app.example.com@evil.com/%2f..",
        "//evil.com/%2f..",
        "//evil%E3%80%82com",
        "/<>//evil.com",
        "/\\/\\/evil.com",
        "/\\evil.com",
        "/\\/evil.com",
        "\\/\\/evil.com",
        "/%2f%5c%2f%67%6f%6f%67%6c%65%2e%63%6f%6d/",
        "//%2f%2fevil.com",
        "//evil.com/?app.example.com",
        "//evil.com%2fapp.example.com",
        "//evil.com%00.app.example.com",
        "/%0a//evil.com",
        "/%0d//evil.com",
        "/%09//evil.com",
        "/%5c%5cevil.com/",
        "/.evil.com",
        "/?url=//evil.com&next=//evil.com&redirect=//evil.com",
        "/x:1/:///%01javascript:alert(document.cookie)/",
        "/%E3%80%82evil.com",
        "//\u3002evil.com",
        "\u3002evil.com",
        "/\u3002evil.com",
        "//\u2215evil.com",
        "//\uff0fevil.com",
        "/\u2215\u2215evil.com",
        "/\uff0f\uff0fevil.com",
        "/\uff3cevil.com",
        "/\u29f5evil.com",
        "/\u200b/evil.com",
        "/\u2028/evil.com",
        "/\u3000/evil.com",
        "/\u00a0/evil.com",
        "/\ufeff/evil.com",
        "/%C0%AF%C0%AFevil.com",
        "/%E2%88%95%E2%88%95evil.com",
        "",
        " ",
        "reports",
        "./reports",
        "../reports",
        "?next=/",
        "#top",
    ]


SECTIONS = [
    plain_paths,
    absolute_urls,
    script_schemes,
    scheme_relative,
    encoded_slashes,
    userinfo_and_host_spellings,
    unicode_lookalikes,
    whitespace_and_controls,
    traversal,
    long_values,
    query_and_fragment,
    public_lists,
]


def payloads() -> list[str]:
    """Every payload, in section order, each once."""
    every: Iterable[str] = (payload for section in SECTIONS for payload in section())
    return list(dict.fromkeys(every))


def _line(payload: str) -> str:
    """One JSON string; characters that are not printable are escaped (``\\uXXXX``)."""
    encoded = json.dumps(payload, ensure_ascii=False)
    out: list[str] = []
    for character in encoded:
        if character.isprintable():
            out.append(character)
        elif ord(character) > 0xFFFF:
            out.append(json.dumps(character)[1:-1])  # a surrogate pair of \u escapes
        else:
            out.append(f"\\u{ord(character):04x}")
    return "".join(out)


def render() -> str:
    return "".join(_line(payload) + "\n" for payload in payloads())


def main(argv: list[str]) -> int:
    text = render()
    if "--check" in argv:
        if OUTPUT.read_text(encoding="utf-8") != text:
            print(f"{OUTPUT} is stale: run {Path(__file__).name}", file=sys.stderr)
            return 1
        return 0
    OUTPUT.write_text(text, encoding="utf-8", newline="\n")
    print(f"wrote {len(payloads())} payloads to {OUTPUT}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
