"""The base of every request body: validated as its JSON Schema reads, not as pydantic's lax mode
would coerce it."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, field_validator

__all__ = ["ClosedObject", "ClosedRequest", "OpenObject", "StrictRequest"]


def _whole_numbers(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, list):
        return [_whole_numbers(item) for item in value]
    return value


class StrictRequest(BaseModel):
    """Strict: "16" is not an integer and 0 is not false, as the schema and OpenAI's API say
    (lax mode took both). A whole float such as 16.0 is an integer to JSON Schema, so it still
    is one here; a float field takes an integer anyway. Only a field's own value and lists of
    values are converted: free-form JSON (tool schemas, metadata) is kept as sent."""

    model_config = ConfigDict(strict=True)

    @field_validator("*", mode="before")
    @classmethod
    def _whole_floats_are_integers(cls, value: Any) -> Any:
        return _whole_numbers(value)


class ClosedRequest(StrictRequest):
    """A request body: an unknown field is a 400 naming it, as OpenAI and Anthropic answer."""

    model_config = ConfigDict(extra="forbid")


class ClosedObject(BaseModel):
    """A nested object the server honours in full (a content block, a tool, a text format): an
    unknown key is refused by name. Not a StrictRequest: a discriminator takes no
    before-validator, and none of these fields is a number."""

    model_config = ConfigDict(extra="forbid", strict=True)


class OpenObject(BaseModel):
    """A nested object whose other keys are kept as sent: one declared only so that the server
    can refuse it by its `type`, or an item a client sends back as it received it."""

    model_config = ConfigDict(extra="allow", strict=True)
