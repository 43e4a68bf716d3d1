"""This CPU, and which weight buffer types a model load may use on it (`--repack`).

llama.cpp's CPU backend offers "extra" buffer types that repack a model's weights at load into
layouts its fast kernels read: AMX tiles on Intel Xeons with AMX, 8×8 interleaved Q4_0 / Q4_K /
IQ4_NL blocks (`CPU_REPACK`) on AVX2, AVX-512 and ARM. AMX kills the process at the first decode
of a prompt on some machines (llama.cpp issue #20824), so under `auto` it is used only where a
probe in a child process proved it works (`engine/amx_probe.py`); the other layouts are kept.

Pure: no llama_cpp here, so the decision is unit-tested with features in, a choice out.
"""

from __future__ import annotations

import os
import platform
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cache
from typing import Literal

__all__ = [
    "AMX_BUFFER_TYPE",
    "REPACK_MODES",
    "CpuInfo",
    "CpuReport",
    "ProbeVerdict",
    "RepackMode",
    "WeightPlacement",
    "build_fit",
    "choose_buffer_types",
    "parse_cpuinfo",
    "read_cpu",
]

RepackMode = Literal["auto", "on", "off"]
REPACK_MODES: tuple[RepackMode, ...] = ("auto", "on", "off")
# What a probe found out about AMX on one machine, build and set of weight types.
ProbeVerdict = Literal["works", "crashed"]

# The name ggml_backend_buft_name gives the AMX buffer type (ggml-cpu/amx/amx.cpp).
AMX_BUFFER_TYPE = "AMX"

# ggml's CPU feature names (ggml_backend_cpu_get_features) -> the /proc/cpuinfo flag that a
# build using it needs. Only instruction sets: OPENMP, REPACK, LLAMAFILE… are not the CPU's.
_X86_FLAGS = {
    "SSE3": "pni",
    "SSSE3": "ssse3",
    "AVX": "avx",
    "AVX_VNNI": "avx_vnni",
    "AVX2": "avx2",
    "F16C": "f16c",
    "FMA": "fma",
    "BMI2": "bmi2",
    "AVX512": "avx512f",
    "AVX512_VBMI": "avx512vbmi",
    "AVX512_VNNI": "avx512_vnni",
    "AVX512_BF16": "avx512_bf16",
    "AMX_INT8": "amx_int8",
}
_ARM_FLAGS = {
    "NEON": "asimd",
    "FP16_VA": "asimdhp",
    "DOTPROD": "asimddp",
    "MATMUL_INT8": "i8mm",
    "SVE": "sve",
    "SME": "sme",
    "SME2": "sme2",
}


@dataclass(frozen=True, slots=True)
class CpuInfo:
    """This machine's CPU as /proc/cpuinfo tells it, with its features in ggml's names."""

    arch: str  # platform.machine(): x86_64, aarch64…
    model: str
    microcode: str
    features: frozenset[str]  # ggml names: AVX2, AVX512, AMX_INT8, NEON…
    flags: frozenset[str] = field(repr=False)  # the raw /proc/cpuinfo flags

    def has(self, feature: str) -> bool:
        return feature in self.features


def parse_cpuinfo(text: str, arch: str) -> CpuInfo:
    """The first processor's model, microcode and flags from /proc/cpuinfo's text."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            if fields:  # the first processor's block is enough: all cores are alike here
                break
            continue
        key, _, value = line.partition(":")
        fields.setdefault(key.strip().lower(), value.strip())
    # x86 lists "flags"; ARM lists "features" and has no model name line on most kernels.
    flags = frozenset((fields.get("flags") or fields.get("features") or "").split())
    table = _ARM_FLAGS if _is_arm(arch) else _X86_FLAGS
    features = frozenset(name for name, flag in table.items() if flag in flags)
    model = fields.get("model name") or fields.get("cpu model") or fields.get("hardware") or ""
    if not model and "cpu implementer" in fields:
        model = f"implementer {fields['cpu implementer']} part {fields.get('cpu part', '?')}"
    return CpuInfo(
        arch=arch,
        model=model or arch,
        microcode=fields.get("microcode", ""),
        features=features,
        flags=flags,
    )


@cache
def read_cpu() -> CpuInfo:
    """This machine's CPU. Where /proc/cpuinfo is missing (macOS), only its architecture."""
    arch = platform.machine().lower() or "unknown"
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as cpuinfo:
            text = cpuinfo.read()
    except OSError:
        text = ""
    info = parse_cpuinfo(text, arch)
    if not text and arch in ("arm64", "aarch64"):  # Apple silicon: NEON and dot product always
        return CpuInfo(
            arch, platform.processor() or arch, "", frozenset({"NEON", "DOTPROD"}), info.flags
        )
    return info


def _is_arm(arch: str) -> bool:
    return arch.startswith(("arm", "aarch"))


def build_fit(build_features: Iterable[str], cpu: CpuInfo) -> tuple[str, ...]:
    """The instruction sets llama.cpp was compiled for that this CPU lacks: a build made on
    another machine (`-march=native`, a copied venv, pip's cached wheel) dies with SIGILL on
    the first of them it runs. Empty when the build fits."""
    table = _ARM_FLAGS if _is_arm(cpu.arch) else _X86_FLAGS
    if not cpu.flags:  # nothing to compare against (no /proc/cpuinfo)
        return ()
    return tuple(name for name in build_features if name in table and not cpu.has(name))


@dataclass(frozen=True, slots=True)
class CpuReport:
    """What `hearth devices` and /health say about the CPU: its features, those llama.cpp was
    built for, the extra buffer types the build offers, and what the build needs that the CPU
    lacks (non-empty: it dies with SIGILL; rebuild)."""

    model: str
    arch: str
    features: tuple[str, ...]
    build_features: tuple[str, ...]
    extra_buffer_types: tuple[str, ...]
    missing: tuple[str, ...]

    def as_dict(self) -> dict[str, object]:
        return {
            "model": self.model,
            "arch": self.arch,
            "features": list(self.features),
            "build_features": list(self.build_features),
            "extra_buffer_types": list(self.extra_buffer_types),
            "build_fits": not self.missing,
            "missing": list(self.missing),
        }


@dataclass(frozen=True, slots=True)
class WeightPlacement:
    """Which of the build's extra buffer types a load offers llama.cpp, and why; after the
    load, how many bytes of weights each buffer type received (`buffers`)."""

    mode: RepackMode
    use_extra_bufts: bool
    offered: tuple[str, ...]  # in llama.cpp's order of preference
    left_out: tuple[str, ...]
    reason: str
    needs_probe: bool = False  # AMX may be offered once a probe proves it on this machine
    buffers: Mapping[str, int] = field(default_factory=dict)  # buffer type -> bytes of weights

    def as_dict(self) -> dict[str, object]:
        return {
            "repack": self.mode,
            "buffer_types": dict(self.buffers),
            "offered": list(self.offered),
            "left_out": list(self.left_out),
            "reason": self.reason,
        }


def choose_buffer_types(
    mode: RepackMode,
    available: Iterable[str],
    cpu: CpuInfo,
    amx_verdict: ProbeVerdict | None,
) -> WeightPlacement:
    """The extra buffer types (`available`, as this build offers them) a load may use.

    `off` uses none (llama-server's `--no-repack`); `on` uses all; `auto` all but AMX, which
    it keeps only where a probe proved it works for these weights on this machine (a verdict
    of None means none has run: `needs_probe`)."""
    available = tuple(available)
    if mode == "off":
        return WeightPlacement(mode, False, (), available, "--repack off: weights as stored")
    if mode == "on":
        return WeightPlacement(mode, True, available, (), "--repack on: every buffer type")
    if AMX_BUFFER_TYPE not in available:
        return WeightPlacement(mode, True, available, (), _no_amx_reason(cpu))
    without_amx = tuple(b for b in available if b != AMX_BUFFER_TYPE)
    if not cpu.has("AMX_INT8"):
        return WeightPlacement(
            mode, True, without_amx, (AMX_BUFFER_TYPE,), "this CPU has no AMX_INT8"
        )
    if amx_verdict == "works":
        return WeightPlacement(mode, True, available, (), "AMX proven on this machine by a probe")
    if amx_verdict == "crashed":
        return WeightPlacement(
            mode,
            True,
            without_amx,
            (AMX_BUFFER_TYPE,),
            "AMX crashed in a probe on this machine (llama.cpp issue #20824)",
        )
    return WeightPlacement(
        mode,
        True,
        without_amx,
        (AMX_BUFFER_TYPE,),
        "AMX not yet proven on this machine",
        needs_probe=True,
    )


def _no_amx_reason(cpu: CpuInfo) -> str:
    if cpu.has("AMX_INT8"):
        return "this llama.cpp build has no AMX kernels"
    return "no AMX on this CPU"


def cache_dir() -> str:
    """Per-user cache: $XDG_CACHE_HOME/hearth, else ~/.cache/hearth (not HEARTH_HOME: a CPU's
    verdict holds for every Hearth home of this user, test servers included)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "hearth")
