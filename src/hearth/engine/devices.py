"""The compute devices llama.cpp's backend registry sees (ggml_backend_dev_*).

llama-cpp-python binds none of these calls, so they are declared here over ctypes.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from pathlib import Path

import llama_cpp as llama

__all__ = ["Device", "list_devices"]

# enum ggml_backend_dev_type in ggml-backend.h
_DEVICE_TYPES = {0: "cpu", 1: "gpu", 2: "igpu", 3: "accel"}


@dataclass(frozen=True, slots=True)
class Device:
    name: str
    description: str
    type: str
    memory_total: int
    memory_free: int


def _ggml() -> ctypes.CDLL:
    lib = ctypes.CDLL(str(Path(llama.__file__).parent / "lib" / "libggml.so"))
    dev_p = ctypes.c_void_p
    lib.ggml_backend_dev_count.restype = ctypes.c_size_t
    lib.ggml_backend_dev_get.argtypes = [ctypes.c_size_t]
    lib.ggml_backend_dev_get.restype = dev_p
    lib.ggml_backend_dev_name.argtypes = [dev_p]
    lib.ggml_backend_dev_name.restype = ctypes.c_char_p
    lib.ggml_backend_dev_description.argtypes = [dev_p]
    lib.ggml_backend_dev_description.restype = ctypes.c_char_p
    lib.ggml_backend_dev_type.argtypes = [dev_p]
    lib.ggml_backend_dev_type.restype = ctypes.c_int
    size_p = ctypes.POINTER(ctypes.c_size_t)
    lib.ggml_backend_dev_memory.argtypes = [dev_p, size_p, size_p]
    lib.ggml_backend_dev_memory.restype = None
    return lib


def list_devices() -> list[Device]:
    from hearth.engine.backend import init_backend

    init_backend()  # loads the backends into the registry
    lib = _ggml()
    devices = []
    for i in range(lib.ggml_backend_dev_count()):
        dev = lib.ggml_backend_dev_get(i)
        free, total = ctypes.c_size_t(), ctypes.c_size_t()
        lib.ggml_backend_dev_memory(dev, ctypes.byref(free), ctypes.byref(total))
        devices.append(
            Device(
                name=(lib.ggml_backend_dev_name(dev) or b"").decode(),
                description=(lib.ggml_backend_dev_description(dev) or b"").decode(),
                type=_DEVICE_TYPES.get(lib.ggml_backend_dev_type(dev), "unknown"),
                memory_total=total.value,
                memory_free=free.value,
            )
        )
    return devices
