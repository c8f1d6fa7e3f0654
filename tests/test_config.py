from __future__ import annotations

import pytest
from cryptography.fernet import Fernet
from pydantic import ValidationError

from sso_broker.config import Settings


def _settings(**values: object) -> Settings:
    return Settings(_env_file=None, **values)  # type: ignore[arg-type]


class TestDefaults:
    def test_documented_defaults(self, no_env: None) -> None:
        settings = _settings()
        assert settings.database_url == "sqlite+aiosqlite:///./var/sso-broker.db"
        assert settings.public_base == "http://127.0.0.1:8000"
        assert settings.sign_in_complete == "http://127.0.0.1:3000/sso/complete"
        assert settings.sign_in_error == "http://127.0.0.1:3000/sso/error"
        assert settings.logged_out == "http://127.0.0.1:3000/sso/logged-out"
        assert settings.entra_authority_base == "https://login.microsoftonline.com"
        assert settings.session_audience == "patchworks-dashboard"
        assert settings.access_token_ttl == 900
        assert settings.session_max_age == 43200
        assert settings.rate_limit_enabled is True
        assert settings.log_level == "info"
        assert settings.access_log is True
        assert str(settings.data_dir) == "var"
        assert not settings.secure_cookies

    def test_frontend_urls_follow_frontend_url(self, no_env: None) -> None:
        settings = _settings(frontend_url="https://dash.example.com/")
        assert settings.sign_in_complete == "https://dash.example.com/sso/complete"
        assert settings.frontend_origin == "https://dash.example.com"

    def test_reads_prefixed_environment(
        self, monkeypatch: pytest.MonkeyPatch, no_env: None
    ) -> None:
        monkeypatch.setenv("SSO_BROKER_PUBLIC_URL", "https://sso.example.com/")
        monkeypatch.setenv("SSO_BROKER_LOG_LEVEL", "DEBUG")
        settings = _settings()
        assert settings.public_base == "https://sso.example.com"
        assert settings.secure_cookies
        assert settings.log_level == "debug"


class TestValidation:
    def test_postgres_without_encryption_keys_is_refused(self, no_env: None) -> None:
        with pytest.raises(ValidationError) as raised:
            _settings(database_url="postgresql+asyncpg://postgres@db/sso")
        assert "SSO_BROKER_ENCRYPTION_KEYS" in str(raised.value)

    def test_postgres_with_keys_is_accepted(self, no_env: None) -> None:
        key = Fernet.generate_key().decode()
        settings = _settings(
            database_url="postgresql+asyncpg://postgres@db/sso", encryption_keys=key
        )
        assert settings.is_postgres
        assert [k.get_secret_value() for k in settings.encryption_keys] == [key]
        assert key not in repr(settings)

    @pytest.mark.parametrize(
        "url", ["mysql://root@db/sso", "postgresql://postgres@db/sso", "not a url"]
    )
    def test_unsupported_database_drivers_are_refused(self, url: str, no_env: None) -> None:
        with pytest.raises(ValidationError):
            _settings(database_url=url, encryption_keys=Fernet.generate_key().decode())

    @pytest.mark.parametrize("ttl", [0, 59, 86401])
    def test_access_token_ttl_bounds(self, ttl: int, no_env: None) -> None:
        with pytest.raises(ValidationError):
            _settings(access_token_ttl=ttl)
