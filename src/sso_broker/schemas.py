"""Base models shared by the API's request bodies, and the page every list answers with."""

from __future__ import annotations

import unicodedata
from typing import Annotated, Any, ClassVar, Generic, Self, TypeVar

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    model_validator,
)


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


def _refuse_numbers(value: object) -> object:
    # Pydantic reads a number ("0.5", "1700000000") as Unix time; the API documents RFC 3339.
    if isinstance(value, str):
        try:
            float(value)
        except ValueError:
            return value
        raise ValueError("must be a date-time with a timezone, such as 2026-01-31T12:00:00Z")
    return value


IsoDateTime = Annotated[AwareDatetime, BeforeValidator(_refuse_numbers)]
"""An RFC 3339 date-time with a timezone, as the OpenAPI ``date-time`` format says."""


class StrictBody(BaseModel):
    """A request body: unknown fields are refused, never ignored or stored."""

    model_config = ConfigDict(extra="forbid")


def _document_not_nullable(schema: dict[str, Any], model: type[BaseModel]) -> None:
    """Drops ``null`` from the JSON schema of the fields a ``PatchBody`` refuses it for."""
    properties = schema.get("properties", {})
    for field in getattr(model, "NOT_NULLABLE", ()):
        prop = properties.get(field)
        if prop is None or "anyOf" not in prop:
            continue
        if "default" in prop and prop["default"] is None:
            del prop["default"]  # leaving the field out keeps the value; null is refused
        variants = [v for v in prop["anyOf"] if v != {"type": "null"}]
        if len(variants) == 1:
            del prop["anyOf"]
            prop.update(variants[0])
        else:
            prop["anyOf"] = variants


class PatchBody(StrictBody):
    """A partial update: absent fields keep their value; ``null`` only where a field allows it."""

    model_config = ConfigDict(extra="forbid", json_schema_extra=_document_not_nullable)

    NOT_NULLABLE: ClassVar[tuple[str, ...]] = ()

    @model_validator(mode="after")
    def _refuse_null_for_required(self) -> Self:
        for field in self.NOT_NULLABLE:
            if field in self.model_fields_set and getattr(self, field) is None:
                raise ValueError(f"{field} cannot be null; leave it out to keep the current value")
        return self


Item = TypeVar("Item")


class Page(BaseModel, Generic[Item]):
    """One page of a list (``paging.py``); subclass it per item type, so OpenAPI names it."""

    items: list[Item]
    next_cursor: str | None = Field(
        description="Pass it as `cursor` for the next page; null on the last page."
    )
