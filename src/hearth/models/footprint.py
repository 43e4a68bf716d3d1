"""How much memory a model takes once loaded, estimated before loading it (Ollama does the same
from the GGUF metadata): the file's size for the weights, plus the KV cache in f16 for every
slot's context. Compute buffers are not counted; they are small next to these for the models
Hearth serves on a CPU.

Only the metadata scalars are read: the header is walked with `struct`, skipping arrays (the
tokenizer's 49k strings) without building them, which `gguf.GGUFReader` does in seconds.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

__all__ = ["ModelShape", "estimate_bytes", "kv_cache_scale", "model_shape", "read_metadata"]

_F16_BYTES = 2
# GGUF value types -> struct format of a scalar (GGUF is little-endian)
_SCALARS = {
    0: "<B",
    1: "<b",
    2: "<H",
    3: "<h",
    4: "<I",
    5: "<i",
    6: "<f",
    7: "<?",
    10: "<Q",
    11: "<q",
    12: "<d",
}
_STRING, _ARRAY = 8, 9

MetadataValue = int | float | bool | str | None


def _read(stream: BinaryIO, fmt: str) -> int | float | bool:
    size = struct.calcsize(fmt)
    data = stream.read(size)
    if len(data) != size:
        raise ValueError("truncated GGUF header")
    value: int | float | bool = struct.unpack(fmt, data)[0]
    return value


def _read_string(stream: BinaryIO) -> str:
    length = int(_read(stream, "<Q"))
    return stream.read(length).decode("utf-8", "replace")


def _skip_value(stream: BinaryIO, value_type: int) -> None:
    if value_type in _SCALARS:
        stream.seek(struct.calcsize(_SCALARS[value_type]), 1)
    elif value_type == _STRING:
        stream.seek(int(_read(stream, "<Q")), 1)
    elif value_type == _ARRAY:
        item_type, count = int(_read(stream, "<I")), int(_read(stream, "<Q"))
        if item_type in _SCALARS:
            stream.seek(struct.calcsize(_SCALARS[item_type]) * count, 1)
        else:
            for _ in range(count):
                _skip_value(stream, item_type)
    else:
        raise ValueError(f"unknown GGUF value type {value_type}")


def read_metadata(path: Path, wanted: Callable[[str], bool]) -> dict[str, MetadataValue]:
    """The scalar metadata values whose keys `wanted` accepts (arrays are skipped)."""
    found: dict[str, MetadataValue] = {}
    with path.open("rb") as stream:
        if stream.read(4) != b"GGUF":
            raise ValueError(f"{path} is not a GGUF file")
        _read(stream, "<I")  # version
        _read(stream, "<Q")  # tensor count
        for _ in range(int(_read(stream, "<Q"))):
            key = _read_string(stream)
            value_type = int(_read(stream, "<I"))
            if wanted(key) and value_type in _SCALARS:
                found[key] = _read(stream, _SCALARS[value_type])
            elif wanted(key) and value_type == _STRING:
                found[key] = _read_string(stream)
            else:
                _skip_value(stream, value_type)
    return found


@dataclass(frozen=True, slots=True)
class ModelShape:
    layers: int
    kv_bytes_per_token: int  # f16 K and V, all layers
    context_length: int | None = None  # the context it was trained for


def model_shape(path: Path) -> ModelShape:
    """Layers and KV bytes per token of context, from the architecture's metadata."""
    meta = read_metadata(path, lambda key: not key.startswith("tokenizer."))
    arch = str(meta.get("general.architecture", "llama"))

    def number(key: str, default: int = 0) -> int:
        value = meta.get(f"{arch}.{key}")
        return int(value) if isinstance(value, int | float) else default

    layers = number("block_count")
    heads = number("attention.head_count", 1) or 1
    heads_kv = number("attention.head_count_kv", heads) or heads
    head_dim = number("embedding_length") // heads
    key_length = number("attention.key_length", head_dim)
    value_length = number("attention.value_length", head_dim)
    trained = number("context_length") or None
    return ModelShape(layers, layers * heads_kv * (key_length + value_length) * _F16_BYTES, trained)


# A model whose GGUF names no trained context gets this many tokens per slot; no slot gets
# fewer than the minimum, whatever memory says (llama.cpp rounds a slot up to 256 anyway).
FALLBACK_CONTEXT = 4096
MIN_CONTEXT = 256
_CONTEXT_STEP = 256


def default_context(
    path: Path, parallel: int, kv_scale: float = 1.0, memory: int | None = None
) -> int:
    """Context tokens per slot when --ctx-size is not given: the model's trained context, or
    less where the KV cache of `parallel` slots would take more than half the memory left
    after the weights (`memory`: --max-memory, else what the system has available). Agents
    send prompts of 15k tokens and more; a model trained for them serves them as it is."""
    try:
        shape = model_shape(path)
    except (OSError, ValueError, struct.error):
        return FALLBACK_CONTEXT  # not a whole GGUF: the load refuses it, naming the file
    trained = shape.context_length or FALLBACK_CONTEXT
    available = memory if memory is not None else available_memory()
    if available is None or shape.kv_bytes_per_token <= 0:
        return trained
    room = max(0, available - path.stat().st_size) // 2
    fits = int(room / (shape.kv_bytes_per_token * kv_scale * parallel))
    fits -= fits % _CONTEXT_STEP
    return max(MIN_CONTEXT, min(trained, fits))


def available_memory() -> int | None:
    """Bytes of memory the system can give without swapping (MemAvailable), where it says."""
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return None


# Bytes per K or V value of each KV cache type (ggml blocks of 32: q8_0 34 bytes, q4_0 18).
_KV_VALUE_BYTES = {"f16": 2.0, "q8_0": 34 / 32, "q4_0": 18 / 32}


def kv_cache_scale(type_k: str, type_v: str) -> float:
    """The KV cache's size with these types (--cache-type-k/-v) relative to f16."""
    return (_KV_VALUE_BYTES[type_k] + _KV_VALUE_BYTES[type_v]) / (2 * _KV_VALUE_BYTES["f16"])


def estimate_bytes(path: Path, context_tokens: int, kv_scale: float = 1.0) -> int:
    """Weights (the file) plus the KV cache for `context_tokens` (ctx_size × parallel), its
    f16 size times `kv_scale` (`kv_cache_scale`)."""
    kv_bytes = model_shape(path).kv_bytes_per_token * context_tokens
    return path.stat().st_size + int(kv_bytes * kv_scale)
