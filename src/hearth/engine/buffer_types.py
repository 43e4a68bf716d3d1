"""llama.cpp's CPU buffer types and features, over ctypes (llama-cpp-python binds none of them).

How a load leaves out one extra buffer type (AMX) and keeps the others: llama.cpp builds a
model's list of CPU buffer types from one array, the CPU backend's
`ggml_backend_dev_get_extra_bufts` (AMX first when the build has it, then CPU_REPACK), and gives
each weight the first type in its list that supports it. `offering(names)` rewrites that array,
for the length of one load, to hold only the types chosen (`engine/cpu.py`). ggml checks at
compute time whether a buffer is an extra type against a separate list, so models loaded earlier
keep working whatever a later load offers.

`tensor_buft_overrides` cannot do this: an override to the CPU type makes llama.cpp choose among
the extra types again (AMX first), and an override to CPU_REPACK is applied without checking that
repack supports the tensor, which crashes at load for every type it does not.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import threading
from collections.abc import Iterator, Sequence
from functools import cache
from pathlib import Path

import llama_cpp as llama

from hearth.engine.cpu import CpuReport, build_fit, read_cpu

__all__ = [
    "build_features",
    "build_id",
    "cpu_report",
    "extra_buffer_types",
    "load_lock",
    "offering",
]

_GGML_BACKEND_DEVICE_TYPE_CPU = 0
_VOID_P = ctypes.c_void_p
_GET_EXTRA_BUFTS = ctypes.CFUNCTYPE(ctypes.POINTER(_VOID_P), _VOID_P)


class _Feature(ctypes.Structure):
    _fields_ = (("name", ctypes.c_char_p), ("value", ctypes.c_char_p))


_GET_FEATURES = ctypes.CFUNCTYPE(ctypes.POINTER(_Feature), _VOID_P)

# A load reads the array `offering` writes: one load at a time in this process.
load_lock = threading.Lock()


def _lib_dir() -> Path:
    return Path(llama.__file__).parent / "lib"


@cache
def _ggml() -> ctypes.CDLL:
    from hearth.engine.backend import init_backend

    init_backend()  # registers the CPU backend
    lib = ctypes.CDLL(str(_lib_dir() / "libggml.so"))
    lib.ggml_backend_dev_by_type.argtypes = [ctypes.c_int]
    lib.ggml_backend_dev_by_type.restype = _VOID_P
    lib.ggml_backend_dev_backend_reg.argtypes = [_VOID_P]
    lib.ggml_backend_dev_backend_reg.restype = _VOID_P
    lib.ggml_backend_reg_get_proc_address.argtypes = [_VOID_P, ctypes.c_char_p]
    lib.ggml_backend_reg_get_proc_address.restype = _VOID_P
    lib.ggml_backend_buft_name.argtypes = [_VOID_P]
    lib.ggml_backend_buft_name.restype = ctypes.c_char_p
    return lib


def _cpu_proc(name: bytes) -> tuple[int | None, int | None]:
    """The CPU device and the address of one of its backend's optional functions (or None)."""
    lib = _ggml()
    device = lib.ggml_backend_dev_by_type(_GGML_BACKEND_DEVICE_TYPE_CPU)
    if not device:
        return None, None
    registry = lib.ggml_backend_dev_backend_reg(device)
    return device, lib.ggml_backend_reg_get_proc_address(registry, name) or None


@cache
def _extra_array() -> tuple[ctypes._Pointer[ctypes.c_void_p] | None, tuple[int, ...]]:
    """The CPU backend's NULL-terminated array of extra buffer types, and its entries as they
    were before Hearth touched it."""
    device, address = _cpu_proc(b"ggml_backend_dev_get_extra_bufts")
    if address is None:
        return None, ()
    array = _GET_EXTRA_BUFTS(address)(device)
    entries: list[int] = []
    while array and array[len(entries)]:
        entries.append(int(array[len(entries)]))
    return array, tuple(entries)


def extra_buffer_types() -> tuple[str, ...]:
    """The extra buffer types this build offers for weights, in llama.cpp's order: AMX,
    CPU_REPACK, KLEIDIAI… (empty for a build without any)."""
    _, entries = _extra_array()
    return tuple(_name(entry) for entry in entries)


def _name(buffer_type: int) -> str:
    return (_ggml().ggml_backend_buft_name(buffer_type) or b"?").decode()


@contextlib.contextmanager
def offering(names: Sequence[str]) -> Iterator[None]:
    """For one model load (hold `load_lock`): offer only the extra buffer types `names`."""
    array, entries = _extra_array()
    if array is None:
        yield
        return
    chosen = [entry for entry in entries if _name(entry) in names]
    # The array holds len(entries) + 1 slots; the chosen ones and a NULL always fit.
    for index in range(len(entries) + 1):
        array[index] = chosen[index] if index < len(chosen) else None
    try:
        yield
    finally:
        for index in range(len(entries) + 1):
            array[index] = entries[index] if index < len(entries) else None


@cache
def build_features() -> tuple[str, ...]:
    """The CPU features llama.cpp was compiled for (ggml_backend_get_features): AVX2, AVX512,
    AMX_INT8, NEON…, and build options such as OPENMP and REPACK."""
    _, address = _cpu_proc(b"ggml_backend_get_features")
    if address is None:
        return ()
    lib = _ggml()
    registry = lib.ggml_backend_dev_backend_reg(
        lib.ggml_backend_dev_by_type(_GGML_BACKEND_DEVICE_TYPE_CPU)
    )
    features = _GET_FEATURES(address)(registry)
    names: list[str] = []
    index = 0
    while features[index].name:
        name, value = features[index].name.decode(), (features[index].value or b"").decode()
        names.append(name if value in ("1", "") else f"{name}={value}")
        index += 1
    return tuple(names)


@cache
def build_id() -> str:
    """Names this llama.cpp build: its version and a hash of its CPU backend's code, so a
    rebuild (another compiler, another -march) is a different build."""
    digest = hashlib.sha256()
    for library in sorted(_lib_dir().glob("libggml-cpu*.so*")) or sorted(
        _lib_dir().glob("libggml*.so*")
    ):
        if not library.is_symlink():
            digest.update(library.read_bytes())
    return f"{llama.__version__}-{digest.hexdigest()[:16]}"


def cpu_report() -> CpuReport:
    cpu = read_cpu()
    built = build_features()
    return CpuReport(
        model=cpu.model,
        arch=cpu.arch,
        features=tuple(sorted(cpu.features)),
        build_features=built,
        extra_buffer_types=extra_buffer_types(),
        missing=build_fit(built, cpu),
    )
