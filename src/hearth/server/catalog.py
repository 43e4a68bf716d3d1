"""The names this server answers to, and how each one loads.

A name is the startup model (`--model`, which may be a .gguf path served under its stem), a
model the registry knows, or a preset's alias from hearth.toml. `ServerCatalog` is the
`ModelCatalog` the model manager asks: it says whether a name exists, its default keep_alive
and its memory estimate, and loads it through the loader app.py gives it.

The registry's models are read from `index` (registry.ModelIndex), in memory: a request does no
file-system work on the event loop to find its model. The app refreshes the index off the loop
when the store's or Ollama's manifests change (`watch_index`), and `known` rescans it once before
answering 404, so a model pulled a moment ago by the CLI or by Ollama is found.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Generic, TypeVar

from hearth.errors import ModelNotFoundError
from hearth.keep_alive import parse_keep_alive
from hearth.models import registry
from hearth.models.footprint import default_context, estimate_bytes, kv_cache_scale
from hearth.models.manager import ServedModel
from hearth.models.presets import Preset, PresetError
from hearth.settings import ServeSettings

M = TypeVar("M", bound=ServedModel)

__all__ = ["ModelSpec", "ServerCatalog"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """What to load for a served name."""

    name: str  # the id requests use
    source: str | None  # what registry.resolve takes: a registry name or a .gguf path
    preset: Preset | None
    ctx_size: int | None  # None: the model's own default (context_size)
    parallel: int


class ServerCatalog(Generic[M]):
    """Generic in what a load makes (server/state.py's LoadedModel), which holds a catalog."""

    def __init__(
        self,
        settings: ServeSettings,
        presets: dict[str, Preset],
        load: Callable[[ModelSpec], M],
        *,
        presets_source: str = "hearth.toml",
    ) -> None:
        self._settings = settings
        self._presets_source = presets_source
        self._presets = presets
        self._load = load
        if settings.no_ollama_store:
            # The registry is read by module functions (the CLI's too); it reads this variable.
            os.environ["HEARTH_NO_OLLAMA_STORE"] = "1"
        self.default_name = registry.model_id(settings.model)
        self.index = registry.ModelIndex()
        self._validate_presets()

    def _validate_presets(self) -> None:
        """Fail `hearth serve` at start, with one line, for a preset that could never load."""
        entries = self.index.entries()
        models = {self.default_name, *(e.name for e in entries if not e.in_ollama_store)}
        # Ollama's store is another program's: what it adds must not stop the server starting.
        ollama_names = {e.name for e in entries if e.in_ollama_store}
        for alias, preset in self._presets.items():
            where = f"{self._presets_source}: models.{alias}"
            if alias in models:
                raise PresetError(f"{where}: the alias is already the name of a model")
            if alias in ollama_names:
                logger.warning("%s hides the model of that name in Ollama's store", where)
            if preset.base in self._presets:
                raise PresetError(f"{where}.base: {preset.base!r} is an alias, not a model")
            if preset.base != self.default_name:
                try:
                    registry.resolve(preset.base)
                except registry.UnknownModelError as exc:
                    raise PresetError(f"{where}.base: {exc}") from exc
            parallel = preset.parallel or self._settings.parallel
            if parallel > self._settings.max_batch_tokens:
                raise PresetError(
                    f"{where}.parallel: {parallel} is more than --max-batch-tokens "
                    f"({self._settings.max_batch_tokens}); each slot adds a token to every step"
                )

    def names(self) -> list[str]:
        """Every name a request may use: the startup model first, then the registry's, then
        the aliases."""
        names = [self.default_name]
        names.extend(n for n in self.index.ids() if n != self.default_name)
        names.extend(alias for alias in self._presets if alias not in names)
        return names

    def own_names(self) -> list[str]:
        """The names this server adds to the registry's: its --model's, then the preset
        aliases. Reads nothing from the store."""
        return [self.default_name, *self._presets]

    def canonical(self, name: str) -> str:
        """The name a model is loaded under: `smol` is `smol:latest` when only that exists, so
        both names share one loaded copy."""
        if name in self._presets or name == self.default_name:
            return name
        tagged = registry.with_default_tag(name)
        index = self.index
        return tagged if name not in index and tagged is not None and tagged in index else name

    def serves(self, name: str) -> bool:
        if name in self._presets or name == self.default_name or name in self.index:
            return True
        tagged = registry.with_default_tag(name)  # `llama3.2` is `llama3.2:latest`, as in Ollama
        return tagged is not None and tagged in self.index

    async def known(self, name: str) -> str:
        """The name `name` loads under, or a 404. A name the index lacks gets one rescan, off
        the event loop, first: a model pulled a moment ago is not missing."""
        if not self.serves(name):
            await asyncio.to_thread(self.index.rescan)
        self.check(name)
        return self.canonical(name)

    async def watch_index(self, interval_s: float = 1.0) -> None:
        """Refresh the index whenever the store's or Ollama's manifests change, off the event
        loop; runs until cancelled (the app's lifespan)."""
        while True:
            await asyncio.sleep(interval_s)
            try:
                await asyncio.to_thread(self.index.refresh)
            except OSError as exc:  # a store folder that went away mid-scan: next time
                logger.warning("Could not rescan the models: %s", exc)

    def check(self, name: str) -> None:
        if not self.serves(name):
            raise ModelNotFoundError(
                f"The model `{name}` does not exist. This server serves: "
                f"{', '.join(self.names())}.",
                param="model",
            )

    def preset(self, name: str) -> Preset | None:
        return self._presets.get(name)

    def served_from(self, model: str) -> list[str]:
        """The names whose requests load the registry model `model`: the name itself, the
        startup model when --model names it, and the aliases based on it."""
        key = model.lower()
        names = [model]
        if self.default_name != model and (self._settings.model or "").lower() == key:
            names.append(self.default_name)
        for alias in self._presets:
            if (self.spec(alias).source or "").lower() == key:
                names.append(alias)
        return names

    def spec(self, name: str) -> ModelSpec:
        self.check(name)
        preset = self._presets.get(name)
        settings = self._settings
        if preset is not None:
            base = preset.base
            source = settings.model if base == self.default_name else base
        else:
            source = settings.model if name == self.default_name else name
            preset = self._model_defaults(source)
        return ModelSpec(
            name=name,
            source=source,
            preset=preset,
            ctx_size=preset.ctx_size if preset and preset.ctx_size else settings.ctx_size,
            parallel=preset.parallel if preset and preset.parallel else settings.parallel,
        )

    def _model_defaults(self, source: str | None) -> Preset | None:
        """The model's own defaults (an Ollama model's system and params layers, or what
        /api/create gave it) as a preset over it; --ctx-size, when given, wins over num_ctx."""
        if source is None or source.lower().endswith(".gguf"):
            return None
        entry = self.index.find(source)
        defaults = entry.defaults if entry is not None else None
        if defaults is None:
            return None
        try:
            preset = defaults.as_preset(source)
        except ValueError as exc:  # pydantic's ValidationError: a value a preset refuses
            logger.warning("Ignoring %s's defaults: %s", source, exc)
            return None
        if "ctx_size" in self._settings.model_fields_set:
            preset = preset.model_copy(update={"ctx_size": None})
        return preset

    # -- ModelCatalog[M] -------------------------------------------------------------------------

    def default_keep_alive(self, name: str) -> float:
        """The preset's keep_alive, else --keep-alive; the startup model stays loaded unless
        --keep-alive was given explicitly."""
        self.check(name)
        preset = self._presets.get(name)
        if preset is not None and preset.keep_alive is not None:
            return parse_keep_alive(preset.keep_alive)
        if name == self.default_name and "keep_alive" not in self._settings.model_fields_set:
            return math.inf
        return parse_keep_alive(self._settings.keep_alive)

    def estimate_bytes(self, name: str) -> int:
        spec = self.spec(name)
        path = _model_path(spec)
        kv_scale = kv_cache_scale(self._settings.cache_type_k, self._settings.cache_type_v)
        return estimate_bytes(path, self.context_size(spec, path) * spec.parallel, kv_scale)

    def context_size(self, spec: ModelSpec, path: Path) -> int:
        """Context tokens per slot: the spec's (--ctx-size, a preset's, the model's num_ctx),
        else the model's trained context as memory allows (footprint.default_context)."""
        if spec.ctx_size is not None:
            return spec.ctx_size
        settings = self._settings
        kv_scale = kv_cache_scale(settings.cache_type_k, settings.cache_type_v)
        memory = int(settings.max_memory) if settings.max_memory is not None else None
        return default_context(path, spec.parallel, kv_scale, memory)

    def load(self, name: str) -> M:
        spec = self.spec(name)
        if spec.ctx_size is None:
            spec = replace(spec, ctx_size=self.context_size(spec, _model_path(spec)))
        return self._load(spec)


def _model_path(spec: ModelSpec) -> Path:
    """The GGUF to load (blocking: it reads the store)."""
    return registry.resolve(spec.source).path
