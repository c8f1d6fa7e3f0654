"""Base models shared by the API's request bodies."""

from __future__ import annotations

from typing import ClassVar, Self

from pydantic import BaseModel, ConfigDict, model_validator


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
