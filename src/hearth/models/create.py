"""`hearth create` and Ollama's POST /api/create: a new model in the store from an existing one
(or a GGUF file, or a blob sent to /api/blobs), with its own system prompt, Jinja chat
template, parameters and license, optionally re-quantized through llama.cpp's quantizer.

Planning checks everything a request can get wrong (the name, the source, the template's
syntax, the parameters, the quantization type) before anything is written, so the server can
answer those with real statuses; building then links (or copies, or quantizes) the GGUF into
the store and writes the manifest, reporting each step as Ollama's create does.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from hearth.models import registry
from hearth.models.defaults import ModelDefaults, check_jinja_template
from hearth.models.store import (
    InvalidModelNameError,
    ModelStore,
    Projector,
    StoredModel,
    check_model_name,
    file_sha256,
)

__all__ = [
    "CreateError",
    "CreatePlan",
    "CreateSourceError",
    "blob_path",
    "build",
    "plan",
]

# Ollama's option names a created model may set (its modelfile.md); load-time ones excepted.
_PARAMETERS = frozenset(
    {
        "num_ctx",
        "num_predict",
        "temperature",
        "top_k",
        "top_p",
        "min_p",
        "stop",
        "seed",
        "presence_penalty",
        "frequency_penalty",
        "repeat_penalty",
        "repeat_last_n",
        "typical_p",
        "mirostat",
        "mirostat_eta",
        "mirostat_tau",
    }
)
_DIGEST = re.compile(r"sha256[:-]([0-9a-f]{64})")


class CreateError(ValueError):
    """A create request that cannot be done as asked; the message says why, in one line."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


class CreateSourceError(CreateError):
    """The model, file or blob to start from does not exist."""


@dataclass(frozen=True, slots=True)
class CreatePlan:
    name: str
    source: str  # what it was made from, for the manifest
    gguf: Path
    sha256: str | None  # the source's, when known without reading it
    defaults: ModelDefaults
    quantize: str | None
    mmproj: Projector | None = None  # the source model's, kept: re-quantizing leaves it valid


def blob_path(models: ModelStore, digest: str) -> Path | None:
    """Where a blob sent to POST /api/blobs/:digest is kept; None for a malformed digest."""
    match = _DIGEST.fullmatch(digest)
    if match is None:
        return None
    return models.staging_dir / "blobs" / f"sha256-{match.group(1)}"


def _parameters(given: dict[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(given) - _PARAMETERS)
    if unknown:
        raise CreateError(
            f"unknown parameter {', '.join(unknown)}; a model may set "
            f"{', '.join(sorted(_PARAMETERS))}",
            param="parameters",
        )
    return dict(given)


def plan(
    models: ModelStore,
    name: str,
    *,
    from_model: str | None = None,
    files: dict[str, str] | None = None,
    gguf_file: Path | None = None,
    system: str | None = None,
    template: str | None = None,
    parameters: dict[str, Any] | None = None,
    license: str | list[str] | None = None,
    quantize: str | None = None,
) -> CreatePlan:
    """What to create; raises CreateError (CreateSourceError for a missing source)."""
    try:
        check_model_name(name)
    except InvalidModelNameError as exc:
        raise CreateError(str(exc), param="model") from exc
    if name.lower() in (bundled.lower() for bundled in registry.BUNDLED_IDS):
        raise CreateError(f"{name} is the name of a bundled model; choose another", "model")
    sources = [s for s in (from_model, files, gguf_file) if s]
    if len(sources) != 1:
        raise CreateError("give exactly one of `from` (a model) or `files` (a GGUF blob)", "from")
    inherited = ModelDefaults()
    sha256: str | None = None
    mmproj: Projector | None = None
    if from_model:
        try:
            entry = registry.find(from_model)
        except registry.UnknownModelError as exc:
            raise CreateSourceError(str(exc), param="from") from exc
        gguf = entry.path or registry.assemble_gemma(models).path
        source, sha256 = f"created from {entry.name}", entry.sha256
        inherited = entry.defaults or inherited
        mmproj = entry.mmproj
    elif files:
        ggufs = [(n, d) for n, d in files.items() if n.lower().endswith(".gguf")]
        if not ggufs:
            raise CreateError(
                "`files` names no .gguf blob: Hearth creates a model from one GGUF and does not "
                "convert safetensors (llama.cpp's convert_hf_to_gguf.py does; send its GGUF)",
                "files",
            )
        if len(ggufs) != 1 or len(files) != 1:
            raise CreateError("`files` must name one .gguf blob (split GGUFs are not supported)")
        filename, digest = ggufs[0]
        path = blob_path(models, digest)
        if path is None:
            raise CreateError(f"{digest!r} is not a sha256 digest", param="files")
        if not path.is_file():
            raise CreateSourceError(
                f"no blob {digest}; send it first with POST /api/blobs/{digest}", param="files"
            )
        gguf, source, sha256 = path, f"created from {filename} ({digest})", path.name[7:]
    else:
        assert gguf_file is not None
        if not gguf_file.is_file():
            raise CreateSourceError(f"no such file: {gguf_file}", param="from")
        gguf, source = gguf_file, f"created from file:{gguf_file.resolve()}"
    if template is not None:
        try:
            check_jinja_template(template)
        except ValueError as exc:
            raise CreateError(f"template: {exc}", param="template") from exc
    kind = quantize.lower() if quantize else None
    if kind is not None:
        from hearth.engine.quantize import QUANT_TYPES

        if kind not in QUANT_TYPES:
            raise CreateError(
                f"cannot quantize to {quantize!r}: Hearth quantizes to "
                f"{', '.join(t.upper() for t in QUANT_TYPES)}",
                param="quantize",
            )
    params = dict(inherited.params) | _parameters(parameters or {})
    licenses = [license] if isinstance(license, str) else license
    defaults = ModelDefaults(
        system=system if system is not None else inherited.system,
        params=params,
        template=template if template is not None else inherited.template,
        license="\n\n".join(licenses) if licenses else inherited.license,
    )
    try:
        defaults.as_preset(name)
    except ValueError as exc:  # pydantic's ValidationError: a value out of range
        raise CreateError(f"parameters: {exc}", param="parameters") from exc
    return CreatePlan(name, source, gguf, sha256, defaults, kind, mmproj)


def build(
    models: ModelStore, plan: CreatePlan, status: Callable[[str], None], threads: int
) -> StoredModel:
    """Write the planned model into the store; `status` hears each step, as Ollama words it."""
    staged = models.temp_path(".gguf")
    mmproj = None
    try:
        if plan.mmproj is not None:
            mmproj = replace(plan.mmproj, path=models.stage_copy(plan.mmproj.path))
        if plan.quantize is not None:
            from hearth.engine.quantize import quantize

            status(f"quantizing model to {plan.quantize.upper()}")
            quantize(plan.gguf, plan.quantize, staged, threads)
            sha256 = file_sha256(staged)
            status(f"creating new layer sha256:{sha256}")
        else:
            try:
                os.link(plan.gguf, staged)  # no second copy on disk
            except OSError:  # another file system, or links not allowed there
                shutil.copyfile(plan.gguf, staged)
            sha256 = plan.sha256 or file_sha256(staged)
            status(f"using existing layer sha256:{sha256}")
        defaults = plan.defaults
        for label, present in (
            ("template", defaults.template),
            ("system", defaults.system),
            ("parameters", defaults.params),
            ("license", defaults.license),
        ):
            if present:
                status(f"creating {label} layer")
        status("writing manifest")
        return models.install(
            plan.name, staged, source=plan.source, sha256=sha256, defaults=defaults, mmproj=mmproj
        )
    finally:
        staged.unlink(missing_ok=True)
        if mmproj is not None:
            mmproj.path.unlink(missing_ok=True)
