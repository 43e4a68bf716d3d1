"""Presets: named aliases over a base model with a system prompt, sampling defaults, and their own
context size and slots, declared in `hearth.toml` (like an Ollama Modelfile, or llama-server's
presets). Parsing and validation are pydantic. A preset is applied once, to the protocol-free
conversation (server/core/prepare.py `with_preset`): the request's own fields always win, and the
preset fills only what the request left unset.

    [models."pirate"]
    base = "smollm2:135m"
    system = "You are a pirate."
    ctx_size = 2048
    parallel = 2
    keep_alive = "10m"
    [models."pirate".params]
    temperature = 0.2
"""

from __future__ import annotations

import tomllib
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from hearth.keep_alive import KeepAlive

__all__ = [
    "PRESETS_FILE_NAME",
    "Preset",
    "PresetError",
    "PresetParams",
    "PresetsFile",
    "load_presets",
]

PRESETS_FILE_NAME = "hearth.toml"
MAX_STOP_SEQUENCES = 4


class PresetError(ValueError):
    """A presets file that cannot be read or does not validate; the message is one line."""


class PresetParams(BaseModel):
    """Sampling defaults: the request's fields of the same names win when set."""

    model_config = ConfigDict(extra="forbid")

    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, ge=0.0, le=1.0)
    top_k: int | None = Field(None, ge=0)
    min_p: float | None = Field(None, ge=0.0, le=1.0)
    max_tokens: int | None = Field(None, ge=1)
    stop: str | list[str] | None = None
    presence_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    seed: int | None = None

    @field_validator("stop")
    @classmethod
    def _at_most_four(cls, stop: str | list[str] | None) -> str | list[str] | None:
        if isinstance(stop, list) and len(stop) > MAX_STOP_SEQUENCES:
            raise ValueError(f"at most {MAX_STOP_SEQUENCES} stop sequences")
        return stop


class Preset(BaseModel):
    model_config = ConfigDict(extra="forbid")

    base: str = Field(description="The model it runs: a registry name or a .gguf path.")
    system: str | None = Field(None, description="Prepended when a chat has no system message.")
    ctx_size: int | None = Field(None, ge=64, description="Context tokens per slot.")
    parallel: int | None = Field(None, ge=1, le=256, description="Slots.")
    keep_alive: KeepAlive | None = Field(None, description="Default keep_alive.")
    template: str | None = Field(
        None, description="A Jinja chat template that replaces the model's own."
    )
    params: PresetParams = Field(default_factory=PresetParams)

    @field_validator("template")
    @classmethod
    def _jinja(cls, template: str | None) -> str | None:
        from hearth.models.template_check import check_jinja_template

        return None if template is None else check_jinja_template(template)


class PresetsFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    models: dict[str, Preset] = Field(default_factory=dict)


def _one_line(error: ValidationError) -> str:
    problems = []
    for detail in error.errors():
        where = ".".join(str(part) for part in detail["loc"])
        problems.append(f"{where}: {detail['msg'].removeprefix('Value error, ')}")
    return "; ".join(problems)


def load_presets(path: Path, *, required: bool = False) -> dict[str, Preset]:
    """The presets in `path`; none when an optional file is absent. Raises PresetError."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        if required:
            raise PresetError(f"{path}: no such file") from None
        return {}
    except OSError as exc:
        raise PresetError(f"{path}: {exc.strerror or exc}") from exc
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise PresetError(f"{path}: not valid TOML: {exc}") from exc
    try:
        return PresetsFile.model_validate(data).models
    except ValidationError as exc:
        raise PresetError(f"{path}: {_one_line(exc)}") from exc
