"""The login-state sealer (``sealing.py``): only what a key of ours sealed opens, and exactly
as sealed; keys rotate with the encryption keys; Fernet cookies of an earlier version open."""

from __future__ import annotations

import base64
import contextlib

import pytest
from cryptography.fernet import Fernet

from sso_broker.crypto import DecryptionError, SecretBox
from sso_broker.sealing import PREFIX, Sealer

PURPOSE = b"sso-broker login-state cookie"


def _box(*keys: str) -> SecretBox:
    return SecretBox(list(keys))


@pytest.fixture
def key() -> str:
    return Fernet.generate_key().decode()


def test_a_sealed_state_opens_as_it_was(key: str) -> None:
    sealer = Sealer.for_purpose(_box(key), PURPOSE)
    text = '{"s":"state","r":"/é ü"}'
    sealed = sealer.encrypt(text)
    assert sealed.startswith(PREFIX)
    assert sealed[len(PREFIX) :].isascii()
    assert "=" not in sealed
    assert text not in sealed
    assert sealer.decrypt(sealed) == text
    assert sealer.encrypt(text) != sealed, "every seal has a nonce of its own"


def test_anything_changed_or_foreign_is_refused(key: str) -> None:
    box = _box(key)
    sealer = Sealer.for_purpose(box, PURPOSE)
    sealed = sealer.encrypt("state")
    body = sealed[len(PREFIX) :]
    flipped = body[:20] + ("A" if body[20] != "A" else "B") + body[21:]
    refused = [
        "",
        PREFIX,
        PREFIX + "AAAA",  # shorter than a nonce and a tag
        PREFIX + flipped,
        sealed[:-1],
        sealed + "A",
        sealed[:30] + "!" + sealed[30:],  # base64 would skip it and open the rest
        sealed[:30] + " " + sealed[30:],
        _swapped(sealer),
        sealed + "é",
        "v2.é" + body,
        PREFIX + body[: 4 * (len(body) // 4)] + "A",  # a length base64 never makes
        PREFIX + "A" * 10_000,
        "v3." + body,
        box.encrypt("state"),  # encrypted at rest: another purpose's key
        Sealer.for_purpose(box, b"another purpose").encrypt("state"),
        Sealer.for_purpose(_box(Fernet.generate_key().decode()), PURPOSE).encrypt("state"),
    ]
    for token in refused:
        with pytest.raises(DecryptionError):
            sealer.decrypt(token)


def _swapped(sealer: Sealer) -> str:
    """A seal with one URL-safe character written in the standard alphabet (``-`` as ``+``,
    ``_`` as ``/``): the same bytes to a lenient decoder."""
    while True:
        sealed = sealer.encrypt("state")
        for index, char in enumerate(sealed[len(PREFIX) :], start=len(PREFIX)):
            if char in "-_":
                return sealed[:index] + {"-": "+", "_": "/"}[char] + sealed[index + 1 :]


def test_exactly_the_sealed_string_opens(key: str) -> None:
    """Base64 ignores the unused low bits of a last 2- or 3-character group: other spellings
    of a seal decode to the same bytes, and must not open."""
    sealer = Sealer.for_purpose(_box(key), PURPOSE)
    for plaintext in ("", "x", "xy", "state"):  # every length modulo 3 of the raw token
        sealed = sealer.encrypt(plaintext)
        assert sealer.decrypt(sealed) == plaintext
        last = sealed[-1]
        others = [
            char
            for char in "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
            if char != last
        ]
        opened = []
        for char in others:
            with contextlib.suppress(DecryptionError):
                opened.append(sealer.decrypt(sealed[:-1] + char))
        assert opened == [], (plaintext, opened)


def test_rotated_keys_still_open_what_the_old_key_sealed(key: str) -> None:
    new = Fernet.generate_key().decode()
    sealed = Sealer.for_purpose(_box(key), PURPOSE).encrypt("state")
    rotated = Sealer.for_purpose(_box(new, key), PURPOSE)
    assert rotated.decrypt(sealed) == "state"
    # The new key seals from then on; without the old one, the old seal no longer opens.
    assert Sealer.for_purpose(_box(new), PURPOSE).decrypt(rotated.encrypt("x")) == "x"
    with pytest.raises(DecryptionError):
        Sealer.for_purpose(_box(new), PURPOSE).decrypt(sealed)


def test_a_fernet_cookie_of_the_previous_version_still_opens(key: str) -> None:
    """A rolling upgrade: the initiate ran on a replica that sealed with Fernet."""
    box = _box(key)
    legacy = box.for_purpose(PURPOSE).encrypt("state")
    assert Sealer.for_purpose(box, PURPOSE).decrypt(legacy) == "state"
    with pytest.raises(DecryptionError):
        Sealer.for_purpose(box, b"another purpose").decrypt(legacy)
    with pytest.raises(DecryptionError):
        Sealer([b"k" * 32]).decrypt(legacy)  # no legacy box: nothing but v2 opens
    # Only Fernet's own spelling: its decoder would skip foreign characters.
    sealer = Sealer.for_purpose(box, PURPOSE)
    for other in (legacy[:20] + "!" + legacy[20:], " ".join(legacy), legacy + "é", "gAAAAé"):
        with pytest.raises(DecryptionError):
            sealer.decrypt(other)


def test_a_seal_that_is_not_utf8_is_refused(key: str) -> None:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCMSIV

    secret = b"s" * 32
    nonce = b"n" * 12
    raw = nonce + AESGCMSIV(secret).encrypt(nonce, b"\xff\xfe", None)
    token = PREFIX + base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
    with pytest.raises(DecryptionError):
        Sealer([secret]).decrypt(token)
