"""--repack: which weight buffer types a load may use, from the CPU's features (engine/cpu.py),
and the AMX probe's verdicts (engine/amx_probe.py). Pure: no llama.cpp, no model."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from hearth.engine import amx_probe
from hearth.engine.cpu import CpuInfo, build_fit, choose_buffer_types, parse_cpuinfo

SAPPHIRE_RAPIDS = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz
microcode\t: 0x2b000620
flags\t\t: fpu sse2 pni ssse3 fma avx f16c bmi2 avx2 avx512f avx512_vnni avx512_bf16 \
avx512vbmi amx_bf16 amx_tile amx_int8

processor\t: 1
model name\t: Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz
flags\t\t: fpu
"""
ZEN4 = """processor\t: 0
model name\t: AMD EPYC 9B14
microcode\t: 0xa10113e
flags\t\t: fpu pni ssse3 fma avx f16c bmi2 avx2 avx512f avx512_vnni avx512_bf16 avx512vbmi
"""
HASWELL = """processor\t: 0
model name\t: Intel(R) Core(TM) i7-4770 CPU @ 3.40GHz
flags\t\t: fpu pni ssse3 fma avx f16c bmi2 avx2
"""
GRAVITON3 = """processor\t: 0
BogoMIPS\t: 2100.00
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp asimddp sve i8mm
CPU implementer\t: 0x41
CPU part\t: 0xd40
"""

# What each build offers (ggml_backend_dev_get_extra_bufts), in llama.cpp's order.
AMX_BUILD = ("AMX", "CPU_REPACK")
X86_BUILD = ("CPU_REPACK",)
ARM_BUILD = ("CPU_REPACK", "KLEIDIAI")


def test_cpuinfo_gives_ggml_feature_names() -> None:
    spr = parse_cpuinfo(SAPPHIRE_RAPIDS, "x86_64")
    assert spr.model.startswith("Intel(R) Xeon(R) Platinum 8481C")
    assert spr.microcode == "0x2b000620"
    assert {"AVX2", "AVX512", "AVX512_VNNI", "AMX_INT8"} <= spr.features
    assert not parse_cpuinfo(ZEN4, "x86_64").has("AMX_INT8")
    assert not parse_cpuinfo(HASWELL, "x86_64").has("AVX512")
    arm = parse_cpuinfo(GRAVITON3, "aarch64")
    assert arm.features == {"NEON", "FP16_VA", "DOTPROD", "MATMUL_INT8", "SVE"}
    assert arm.model == "implementer 0x41 part 0xd40"


def test_amx_is_left_out_until_a_probe_proves_it() -> None:
    cpu = parse_cpuinfo(SAPPHIRE_RAPIDS, "x86_64")
    unknown = choose_buffer_types("auto", AMX_BUILD, cpu, None)
    assert unknown.needs_probe
    assert unknown.offered == ("CPU_REPACK",) and unknown.left_out == ("AMX",)
    crashed = choose_buffer_types("auto", AMX_BUILD, cpu, "crashed")
    assert not crashed.needs_probe and crashed.offered == ("CPU_REPACK",)
    assert "crashed" in crashed.reason
    works = choose_buffer_types("auto", AMX_BUILD, cpu, "works")
    assert works.offered == ("AMX", "CPU_REPACK") and works.use_extra_bufts


def test_avx512_without_amx_and_avx2_only_keep_the_repacked_layouts() -> None:
    for text in (ZEN4, HASWELL):
        choice = choose_buffer_types("auto", X86_BUILD, parse_cpuinfo(text, "x86_64"), None)
        assert choice.use_extra_bufts and choice.offered == ("CPU_REPACK",)
        assert not choice.needs_probe and choice.left_out == ()
        assert choice.reason == "no AMX on this CPU"


def test_arm_keeps_every_layout_its_build_offers() -> None:
    choice = choose_buffer_types("auto", ARM_BUILD, parse_cpuinfo(GRAVITON3, "aarch64"), None)
    assert choice.offered == ARM_BUILD and not choice.needs_probe


def test_an_amx_build_on_a_cpu_without_amx_offers_no_amx() -> None:
    choice = choose_buffer_types("auto", AMX_BUILD, parse_cpuinfo(ZEN4, "x86_64"), None)
    assert choice.offered == ("CPU_REPACK",) and not choice.needs_probe


def test_on_and_off_do_as_they_say_whatever_the_cpu() -> None:
    cpu = parse_cpuinfo(SAPPHIRE_RAPIDS, "x86_64")
    on = choose_buffer_types("on", AMX_BUILD, cpu, "crashed")
    assert on.offered == AMX_BUILD and on.use_extra_bufts
    off = choose_buffer_types("off", AMX_BUILD, cpu, "works")
    assert off.offered == () and not off.use_extra_bufts and off.left_out == AMX_BUILD


def test_a_build_for_features_the_cpu_lacks_is_named() -> None:
    built = ("SSE3", "AVX2", "AVX512", "AVX512_VNNI", "OPENMP", "REPACK")
    assert build_fit(built, parse_cpuinfo(HASWELL, "x86_64")) == ("AVX512", "AVX512_VNNI")
    assert build_fit(built, parse_cpuinfo(ZEN4, "x86_64")) == ()
    arm_build = ("NEON", "DOTPROD", "SVE", "SME", "OPENMP")
    assert build_fit(arm_build, parse_cpuinfo(GRAVITON3, "aarch64")) == ("SME",)
    assert build_fit(built, CpuInfo("x86_64", "?", "", frozenset(), frozenset())) == ()


# -- the probe ------------------------------------------------------------------------------------


def test_a_probe_child_that_crashes_or_hangs_is_a_crashed_verdict() -> None:
    python = sys.executable
    segv = "import os, signal; os.kill(os.getpid(), signal.SIGSEGV)"
    assert amx_probe.run_probe_command([python, "-c", segv], 30) == (
        "crashed",
        "killed by SIGSEGV",
    )
    fails = "import sys; sys.exit('GGML_ASSERT failed')"
    assert amx_probe.run_probe_command([python, "-c", fails], 30) == (
        "crashed",
        "exit code 1: GGML_ASSERT failed",
    )
    hangs = "import time; time.sleep(30)"
    assert amx_probe.run_probe_command([python, "-c", hangs], 0.5)[0] == "crashed"
    silent = "pass"  # exiting 0 without the ok line proves nothing
    assert amx_probe.run_probe_command([python, "-c", silent], 30)[0] == "crashed"
    ok = f"print({amx_probe.OK_LINE!r})"
    assert amx_probe.run_probe_command([python, "-c", ok], 30)[0] == "works"


def test_a_verdict_is_probed_once_then_kept_per_machine(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On an AMX machine whose build has AMX, the first load probes; later loads of the same
    kinds of weights read the verdict; other weight types are probed again."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(amx_probe, "read_cpu", lambda: parse_cpuinfo(SAPPHIRE_RAPIDS, "x86_64"))
    import hearth.engine.buffer_types as buffer_types

    monkeypatch.setattr(buffer_types, "extra_buffer_types", lambda: AMX_BUILD)
    monkeypatch.setattr(buffer_types, "build_id", lambda: "0.3.36-test")
    probes: list[Path] = []

    def probe(path: Path, shape: amx_probe.ProbeShape, timeout_s: float) -> tuple[str, str]:
        probes.append(path)
        return ("crashed", "killed by SIGSEGV") if "q4_1" in path.name else ("works", "ok")

    monkeypatch.setattr(amx_probe, "_probe", probe)
    shape = amx_probe.ProbeShape(n_slots=4, n_batch=512, n_prefill=128, n_threads=2)
    q4_1, q4_0 = tmp_path / "model.q4_1.gguf", tmp_path / "model.q4_0.gguf"

    first = amx_probe.plan_weights("auto", q4_1, ("F32", "Q4_1"), shape)
    assert first.offered == ("CPU_REPACK",) and "crashed" in first.reason
    again = amx_probe.plan_weights("auto", q4_1, ("F32", "Q4_1"), shape)
    assert again.offered == ("CPU_REPACK",) and probes == [q4_1]
    proven = amx_probe.plan_weights("auto", q4_0, ("F32", "Q4_0"), shape)
    assert proven.offered == AMX_BUILD and probes == [q4_1, q4_0]
    assert amx_probe.plan_weights("on", q4_1, ("F32", "Q4_1"), shape).offered == AMX_BUILD
    assert probes == [q4_1, q4_0]  # `on` never probes
    assert (tmp_path / "cache" / "hearth" / amx_probe.VERDICTS_FILE).is_file()
