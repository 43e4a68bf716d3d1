"""A tiny random vision projector for SmolLM2, written at test time by
scripts/make_test_mmproj.py, and PNGs made by hand (no imaging library)."""

from __future__ import annotations

import importlib.util
import struct
import sys
import zlib
from collections.abc import Callable
from pathlib import Path

Pixel = Callable[[int, int], tuple[int, int, int]]


def write_test_projector(path: Path, projector: str = "mlp") -> Path:
    """An mmproj GGUF for SmolLM2-135M (64 image positions per image with `mlp`)."""
    script = Path(__file__).parents[2] / "scripts" / "make_test_mmproj.py"
    spec = importlib.util.spec_from_file_location("make_test_mmproj", script)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    module.write_test_mmproj(path, projector=projector)
    return path


def png(width: int, height: int, pixel: Pixel, level: int = 6) -> bytes:
    """A PNG whose pixel (x, y) is pixel(x, y): an RGB triple; zlib `level` 0 stores it."""
    rows = b"".join(
        b"\x00" + b"".join(bytes(pixel(x, y)) for x in range(width)) for y in range(height)
    )

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows, level))
        + chunk(b"IEND", b"")
    )
