"""A model's own defaults: what an Ollama model's `system`, `params`, `template` and `license`
layers (or `/api/create`'s fields) set. Served as a preset would set them (models/presets.py):
the request's own fields win.

Ollama's parameters use its option names (modelfile.md); those with a Hearth request field
become preset params (`num_predict` is `max_tokens`), `num_ctx` the context size per slot, and
the rest (`repeat_penalty`, `mirostat`, …) are kept for `show` but not applied.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from hearth.models.template_check import GoTemplateError, check_jinja_template

if TYPE_CHECKING:
    from hearth.models.presets import Preset

__all__ = ["GoTemplateError", "ModelDefaults", "check_jinja_template"]

logger = logging.getLogger(__name__)

# Ollama option name -> preset param name.
_PARAMS = {
    "temperature": "temperature",
    "top_p": "top_p",
    "top_k": "top_k",
    "min_p": "min_p",
    "num_predict": "max_tokens",
    "stop": "stop",
    "presence_penalty": "presence_penalty",
    "frequency_penalty": "frequency_penalty",
    "seed": "seed",
}
_MAX_STOP = 4


@dataclass(frozen=True, slots=True)
class ModelDefaults:
    system: str | None = None
    # Ollama's parameter names and values, as the params layer or /api/create gave them.
    params: dict[str, Any] = field(default_factory=dict)
    # A Jinja chat template that replaces the GGUF's; None keeps the GGUF's.
    template: str | None = None
    license: str | None = None

    @property
    def empty(self) -> bool:
        return not (self.system or self.params or self.template or self.license)

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "system": self.system,
            "params": self.params,
            "template": self.template,
            "license": self.license,
        }
        return {key: value for key, value in data.items() if value}

    @classmethod
    def from_json(cls, data: object) -> ModelDefaults | None:
        if not isinstance(data, dict):
            return None
        params = data.get("params")
        return cls(
            system=_text(data.get("system")),
            params=dict(params) if isinstance(params, dict) else {},
            template=_text(data.get("template")),
            license=_text(data.get("license")),
        )

    def preset_params(self) -> dict[str, Any]:
        """The params a preset takes, by its names; the rest are left out."""
        params: dict[str, Any] = {}
        for name, value in self.params.items():
            target = _PARAMS.get(name)
            if target is None:
                continue
            if target == "stop":
                if isinstance(value, str):
                    stops = [value]
                elif isinstance(value, list) and all(isinstance(v, str) for v in value):
                    stops = list(value)
                else:  # /api/create checks this first (as_preset); a manifest may not have
                    raise ValueError("stop: a string or a list of strings")
                if len(stops) > _MAX_STOP:
                    logger.info("Keeping the first %d of %d stop strings", _MAX_STOP, len(stops))
                value = stops[:_MAX_STOP]
            if target == "max_tokens" and isinstance(value, int) and value < 0:
                continue  # -1 and -2: no limit, which is already the default
            params[target] = value
        return params

    @property
    def ctx_size(self) -> int | None:
        value = self.params.get("num_ctx")
        return value if isinstance(value, int) and value >= 64 else None

    def as_preset(self, base: str) -> Preset:
        """A preset over `base` with these defaults. Raises pydantic's ValidationError for a
        value a preset refuses."""
        from hearth.models.presets import Preset, PresetParams

        return Preset(
            base=base,
            system=self.system,
            ctx_size=self.ctx_size,
            template=self.template,
            params=PresetParams.model_validate(self.preset_params()),
        )


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None
