"""Base models shared by the API's request bodies."""

from __future__ import annotations

import unicodedata
from typing import Annotated, ClassVar, Self

from pydantic import AfterValidator, BaseModel, ConfigDict, StringConstraints, model_validator


def refuse_control_characters(value: str) -> str:
    """Refuses NUL, newlines, bidi overrides and other invisible controls in display text.

    PostgreSQL cannot store NUL at all (a 500 instead of a 422), and the others let a name
    forge log lines or disguise itself in the dashboard.
    """
    if any(unicodedata.category(char) in ("Cc", "Cf") for char in value):
        raise ValueError("must not contain control or invisible formatting characters")
    return value


# Company, user and provider names share one limit (their columns are this long).
DISPLAY_NAME_MAX = 200

DisplayName = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=DISPLAY_NAME_MAX),
    AfterValidator(refuse_control_characters),
]
"""A name shown to people: trimmed, 1 to 200 characters, no control characters."""


class StrictBody(BaseModel):
    """A request body: unknown fields are refused, never ignored or stored."""

    model_config = ConfigDict(extra="forbid")


class PatchBody(StrictBody):
    """A partial update: absent fields keep their value; ``null`` only where a field allows it."""

    NOT_NULLABLE: ClassVar[tuple[str, ...]] = ()

    @model_validator(mode="after")
    def _refuse_null_for_required(self) -> Self:
        for field in self.NOT_NULLABLE:
            if field in self.model_fields_set and getattr(self, field) is None:
                raise ValueError(f"{field} cannot be null; leave it out to keep the current value")
        return self
