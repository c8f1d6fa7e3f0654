from __future__ import annotations

import pytest
from pydantic import TypeAdapter, ValidationError

from sso_broker.providers.schemas import ProviderUpdate
from sso_broker.schemas import DisplayName

NAME: TypeAdapter[str] = TypeAdapter(DisplayName)


class TestDisplayName:
    @pytest.mark.parametrize(
        "value",
        [
            "a\x00b",  # PostgreSQL cannot store it
            "line\nbreak",  # forges log lines and dashboard rows
            "tab\there",
            "\u202eevil",  # right-to-left override
            "zero\u200bwidth",
            "\x7fdel",
        ],
    )
    def test_control_and_invisible_characters_are_refused(self, value: str) -> None:
        with pytest.raises(ValidationError):
            NAME.validate_python(value)

    @pytest.mark.parametrize("value", ["Ada Lovelace", "Zoë Ørsted", "山田 太郎", "O'Brien-Smith"])
    def test_ordinary_names_pass_trimmed(self, value: str) -> None:
        assert NAME.validate_python(f"  {value} ") == value

    @pytest.mark.parametrize("value", ["", "   ", "x" * 201])
    def test_length_is_1_to_200(self, value: str) -> None:
        with pytest.raises(ValidationError):
            NAME.validate_python(value)


class TestProviderUpdate:
    def test_the_secret_never_appears_in_the_model_repr(self) -> None:
        update = ProviderUpdate(client_secret="Zq8Q~repr-secret")
        assert "repr-secret" not in repr(update)
        assert "repr-secret" not in str(update)

    @pytest.mark.parametrize("value", ["yes", "on", 1, "true"])
    def test_enabled_takes_only_json_booleans(self, value: object) -> None:
        with pytest.raises(ValidationError):
            ProviderUpdate.model_validate({"enabled": value})
