"""What a GGUF file says about its model, read from its header without touching the weights.

The header (metadata key/values, then one info record per tensor) is walked with
`struct.unpack_from` over an mmap, using the gguf package's enums and block sizes. gguf's own
`GGUFReader` builds a numpy view for every element of every array, so it takes 2.7 s on
SmolLM2's 49k-token vocabulary and 12 s or more on Gemma's 262k; this walk skips array contents
and reads the same fields in milliseconds (tests/models/test_gguf_info.py checks the two agree).
"""

from __future__ import annotations

import mmap
import os
import struct
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["GGUF_MAGIC", "GGUFInfo", "NotAGGUFError", "is_gguf", "read_gguf_info"]

GGUF_MAGIC = b"GGUF"
# Bounds for a header from an untrusted file: far above any real model, far below a hang.
_MAX_COUNT = 1 << 24
_DEFAULT_ALIGNMENT = 32

# GGUF value types (gguf.GGUFValueType) -> struct code of a scalar of that type.
_SCALARS = {
    0: "B",
    1: "b",
    2: "H",
    3: "h",
    4: "I",
    5: "i",
    6: "f",
    7: "?",
    10: "Q",
    11: "q",
    12: "d",
}
_STRING = 8
_ARRAY = 9


class NotAGGUFError(ValueError):
    """The file is not a GGUF model, or is cut short."""


@dataclass(frozen=True, slots=True)
class GGUFInfo:
    architecture: str
    context_length: int | None
    parameters: int
    quantization: str
    license: str | None
    chat_template: str | None
    size_bytes: int
    name: str | None = None
    block_count: int | None = None
    embedding_length: int | None = None
    vocab_size: int | None = None
    # Every tensor type in the file (F32, Q4_K, Q6_K…), sorted: what kernels the weights need.
    tensor_types: tuple[str, ...] = ()


def is_gguf(path: Path) -> bool:
    try:
        with path.open("rb") as file:
            return file.read(4) == GGUF_MAGIC
    except OSError:
        return False


class _Cursor:
    """Reads little- or big-endian GGUF values from a buffer, with bounds checks."""

    def __init__(self, buffer: Any, endian: str) -> None:
        self.buffer = buffer
        self.endian = endian
        self.offset = 0

    def scalar(self, code: str) -> Any:
        fmt = self.endian + code
        try:
            (value,) = struct.unpack_from(fmt, self.buffer, self.offset)
        except struct.error as exc:
            raise NotAGGUFError("the GGUF header is cut short") from exc
        self.offset += struct.calcsize(fmt)
        return value

    def count(self) -> int:
        value: int = self.scalar("Q")
        if value > _MAX_COUNT:
            raise NotAGGUFError(f"implausible count {value} in the GGUF header")
        return value

    def string(self) -> str:
        length: int = self.scalar("Q")
        end = self.offset + length
        if end > len(self.buffer):
            raise NotAGGUFError("the GGUF header is cut short")
        raw = bytes(self.buffer[self.offset : end])
        self.offset = end
        return raw.decode("utf-8", errors="replace")

    def skip_string(self) -> None:
        length: int = self.scalar("Q")
        self.offset += length
        if self.offset > len(self.buffer):
            raise NotAGGUFError("the GGUF header is cut short")

    def value(self, value_type: int) -> Any:
        """A scalar or string; an array is skipped and stands as its length."""
        if value_type in _SCALARS:
            return self.scalar(_SCALARS[value_type])
        if value_type == _STRING:
            return self.string()
        if value_type == _ARRAY:
            item_type: int = self.scalar("I")
            length = self.count()
            if item_type in _SCALARS:
                self.offset += length * struct.calcsize(_SCALARS[item_type])
                if self.offset > len(self.buffer):
                    raise NotAGGUFError("the GGUF header is cut short")
            elif item_type == _STRING:
                for _ in range(length):
                    self.skip_string()
            else:  # arrays of arrays: walk each one
                for _ in range(length):
                    self.value(item_type)
            return length
        raise NotAGGUFError(f"unknown GGUF value type {value_type}")


def _quantization(file_type: Any, tensor_types: Counter[int]) -> str:
    import gguf

    if isinstance(file_type, int):
        try:
            name: str = gguf.LlamaFileType(file_type).name
            return name.removeprefix("MOSTLY_").removeprefix("ALL_")
        except ValueError:
            pass
    if not tensor_types:
        return "unknown"
    # No (known) file type: name it after the type holding the most weights.
    most, _ = tensor_types.most_common(1)[0]
    return _type_name(most)


def _type_name(tensor_type: int) -> str:
    import gguf

    try:
        return str(gguf.GGMLQuantizationType(tensor_type).name)
    except ValueError:
        return f"type {tensor_type}"


def _tensor_bytes(tensor_type: int, elements: int) -> int | None:
    import gguf

    try:
        block_size, type_size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType(tensor_type)]
    except (ValueError, KeyError):
        return None  # a type newer than the installed gguf: its size cannot be checked
    return int(elements // block_size * type_size)


def read_gguf_info(path: Path, *, require_complete: bool = True) -> GGUFInfo:
    """Read the model's metadata from a GGUF file's header.

    With `require_complete`, also checks that every tensor's data lies inside the file, so a
    truncated copy is refused. Raises NotAGGUFError for anything that is not a whole GGUF.
    """
    try:
        with path.open("rb") as file:
            size = os.fstat(file.fileno()).st_size
            if size < 24:
                raise NotAGGUFError(f"{path} is not a GGUF file (only {size} bytes)")
            with mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as buffer:
                return _parse(buffer, path, size, require_complete)
    except OSError as exc:
        raise NotAGGUFError(f"cannot read {path}: {exc.strerror or exc}") from exc


def _parse(buffer: mmap.mmap, path: Path, size: int, require_complete: bool) -> GGUFInfo:
    if buffer[:4] != GGUF_MAGIC:
        raise NotAGGUFError(f"{path} is not a GGUF file (it does not start with 'GGUF')")
    # The version is tiny; a byte-swapped one means a big-endian file.
    (version,) = struct.unpack_from("<I", buffer, 4)
    endian = "<" if version & 0xFFFF else ">"
    cursor = _Cursor(buffer, endian)
    cursor.offset = 4
    version = cursor.scalar("I")
    if version not in (2, 3):
        raise NotAGGUFError(f"{path}: GGUF version {version} is not supported")
    tensor_count = cursor.count()
    kv_count = cursor.count()

    metadata: dict[str, Any] = {}
    for _ in range(kv_count):
        key = cursor.string()
        metadata[key] = cursor.value(cursor.scalar("I"))

    parameters = 0
    data_end = 0
    tensor_types: Counter[int] = Counter()
    for _ in range(tensor_count):
        cursor.skip_string()
        n_dims: int = cursor.scalar("I")
        if n_dims > 8:
            raise NotAGGUFError(f"{path}: a tensor with {n_dims} dimensions")
        elements = 1
        for _ in range(n_dims):
            elements *= cursor.scalar("Q")
        tensor_type: int = cursor.scalar("I")
        offset: int = cursor.scalar("Q")
        parameters += elements
        tensor_types[tensor_type] += elements
        nbytes = _tensor_bytes(tensor_type, elements)
        if nbytes is not None:
            data_end = max(data_end, offset + nbytes)

    alignment = metadata.get("general.alignment", _DEFAULT_ALIGNMENT)
    if not isinstance(alignment, int) or alignment <= 0:
        alignment = _DEFAULT_ALIGNMENT
    data_start = -(-cursor.offset // alignment) * alignment
    if require_complete and data_start + data_end > size:
        raise NotAGGUFError(
            f"{path} is cut short: its tensors need {data_start + data_end} bytes, "
            f"the file has {size}"
        )

    architecture = metadata.get("general.architecture")
    if not isinstance(architecture, str):
        raise NotAGGUFError(f"{path} has no general.architecture: not a model GGUF")

    def text(key: str) -> str | None:
        value = metadata.get(key)
        return value if isinstance(value, str) else None

    def number(key: str) -> int | None:
        value = metadata.get(key)
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    return GGUFInfo(
        architecture=architecture,
        context_length=number(f"{architecture}.context_length"),
        parameters=parameters,
        quantization=_quantization(metadata.get("general.file_type"), tensor_types),
        license=text("general.license"),
        chat_template=text("tokenizer.chat_template"),
        size_bytes=size,
        name=text("general.name"),
        block_count=number(f"{architecture}.block_count"),
        embedding_length=number(f"{architecture}.embedding_length"),
        vocab_size=number("tokenizer.ggml.tokens"),  # an array stands as its length
        tensor_types=tuple(sorted(_type_name(t) for t in tensor_types)),
    )
