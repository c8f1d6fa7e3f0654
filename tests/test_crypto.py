from __future__ import annotations

import stat
from pathlib import Path

import pytest
from cryptography.fernet import Fernet
from sqlalchemy import text

from sso_broker.config import Settings
from sso_broker.crypto import (
    DecryptionError,
    EncryptionKeyError,
    SecretBox,
    generate_signing_key,
    load_encryption_keys,
    load_private_key,
)
from sso_broker.deps import AppContext
from tests.conftest import Factory


def _embedded_settings(tmp_path: Path, **overrides: object) -> Settings:
    return Settings(
        _env_file=None,  # type: ignore[call-arg]
        database_url=f"sqlite+aiosqlite:///{tmp_path}/data/sso.db",
        **overrides,  # type: ignore[arg-type]
    )


class TestSecretBox:
    def test_round_trip_hides_the_plaintext(self) -> None:
        box = SecretBox([Fernet.generate_key().decode()])
        token = box.encrypt("s3cr3t~value")
        assert "s3cr3t" not in token
        assert box.decrypt(token) == "s3cr3t~value"

    def test_rotation_new_first_key_encrypts_old_keys_still_decrypt(self) -> None:
        old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
        before = SecretBox([old]).encrypt("value-under-old-key")
        rotated_box = SecretBox([new, old])
        assert rotated_box.decrypt(before) == "value-under-old-key"
        after = rotated_box.encrypt("value-under-new-key")
        assert SecretBox([new]).decrypt(after) == "value-under-new-key"
        with pytest.raises(DecryptionError):
            SecretBox([old]).decrypt(after)
        # Re-encrypting moves an old token under the new key, so the old key can go.
        assert SecretBox([new]).decrypt(rotated_box.rotate(before)) == "value-under-old-key"

    def test_unknown_key_fails_with_advice_and_no_secret(self) -> None:
        token = SecretBox([Fernet.generate_key().decode()]).encrypt("top-secret")
        with pytest.raises(DecryptionError) as raised:
            SecretBox([Fernet.generate_key().decode()]).decrypt(token)
        assert "SSO_BROKER_ENCRYPTION_KEYS" in str(raised.value)
        assert "top-secret" not in str(raised.value)

    def test_refuses_no_keys(self) -> None:
        with pytest.raises(EncryptionKeyError):
            SecretBox([])


class TestKeyLoading:
    def test_embedded_mode_generates_a_0600_key_file_once_and_reuses_it(
        self, tmp_path: Path, no_env: None
    ) -> None:
        settings = _embedded_settings(tmp_path)
        first = load_encryption_keys(settings)
        key_file = tmp_path / "data" / "encryption.keys"
        assert key_file.exists()
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
        assert load_encryption_keys(settings) == first
        assert len(first) == 1

    def test_configured_keys_win_over_the_key_file(self, tmp_path: Path, no_env: None) -> None:
        key = Fernet.generate_key().decode()
        settings = _embedded_settings(tmp_path, encryption_keys=f" {key} ,")
        assert load_encryption_keys(settings) == [key]
        assert not (tmp_path / "data" / "encryption.keys").exists()

    @pytest.mark.parametrize("bad", ["not base64 at all!", "c2hvcnQ=", "a" * 44])
    def test_malformed_keys_are_refused_with_advice(
        self, tmp_path: Path, bad: str, no_env: None
    ) -> None:
        settings = _embedded_settings(tmp_path, encryption_keys=bad)
        with pytest.raises(EncryptionKeyError) as raised:
            load_encryption_keys(settings)
        assert "Fernet.generate_key" in str(raised.value)


class TestSigningKeys:
    def test_generated_key_has_a_fingerprint_kid_and_a_public_jwk(self) -> None:
        material = generate_signing_key()
        assert material.algorithm == "ES256"
        assert material.public_jwk["kid"] == material.kid
        assert material.public_jwk["crv"] == "P-256"
        assert "d" not in material.public_jwk  # never the private half
        assert load_private_key(material.private_pem)
        assert generate_signing_key().kid != material.kid


class TestEncryptionAtRest:
    async def test_raw_columns_hold_no_plaintext(
        self, factory: Factory, context: AppContext
    ) -> None:
        company = await factory.company()
        secret = "Abc8Q~plaintext-client-secret-value"
        await factory.provider(company, client_id=None, client_secret=secret)
        async with context.engine.connect() as connection:
            stored = (
                await connection.execute(text("SELECT client_secret_encrypted FROM sso_providers"))
            ).scalar_one()
            private_keys = (
                await connection.execute(text("SELECT private_key_encrypted FROM signing_keys"))
            ).scalars()
            for private in private_keys:
                assert "PRIVATE KEY" not in private
                assert context.box.decrypt(private).startswith("-----BEGIN PRIVATE KEY-----")
        assert secret not in stored
        assert context.box.decrypt(stored) == secret


def test_a_purpose_has_keys_of_its_own() -> None:
    """Login-state cookies are sealed with keys derived (HKDF) for that purpose: a secret
    encrypted at rest never opens as a cookie, nor the other way round."""
    from cryptography.fernet import Fernet

    from sso_broker.crypto import DecryptionError, SecretBox

    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    box = SecretBox([old])
    cookies = box.for_purpose(b"login-state")
    sealed = cookies.encrypt("state")
    assert cookies.decrypt(sealed) == "state"
    with pytest.raises(DecryptionError):
        box.decrypt(sealed)
    with pytest.raises(DecryptionError):
        cookies.decrypt(box.encrypt("client secret"))
    with pytest.raises(DecryptionError):
        box.for_purpose(b"another").decrypt(sealed)
    # Rotating the keys rotates the purpose's too: the old key's seals still open.
    rotated = SecretBox([new, old]).for_purpose(b"login-state")
    assert rotated.decrypt(sealed) == "state"
