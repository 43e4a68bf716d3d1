"""Does the llama.cpp in this environment fit this CPU?

llama-cpp-python compiles llama.cpp with `-march=native`, and pip caches that wheel: a venv or a
cache carried to an older CPU dies with SIGILL as soon as llama.cpp runs an instruction the CPU
lacks, possibly while it loads. So the check loads llama.cpp in a child process
(`python -m hearth.engine.build_check`), which prints the CPU report as JSON and exits 3 when
the build needs features the CPU lacks; the child dying of SIGILL says the same. `make serve`
rebuilds llama.cpp for this CPU when it fails; `hearth devices` reports it.
"""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
from dataclasses import dataclass

__all__ = ["BUILD_MISFIT_EXIT", "BuildCheck", "check_build", "main"]

BUILD_MISFIT_EXIT = 3
REBUILD_HINT = (
    "rebuild llama.cpp for this CPU: `make rebuild-llama` in a Hearth checkout, or "
    "`pip install --force-reinstall --no-deps --no-cache-dir --no-binary llama-cpp-python "
    "llama-cpp-python==<its version>`"
)


@dataclass(frozen=True, slots=True)
class BuildCheck:
    fits: bool
    report: dict[str, object] | None  # CpuReport.as_dict(), when the child could say
    problem: str  # empty when it fits


def check_build(timeout_s: float = 120.0) -> BuildCheck:
    """Load llama.cpp in a child process and compare its build with this CPU."""
    try:
        done = subprocess.run(
            [sys.executable, "-m", "hearth.engine.build_check"],
            capture_output=True,
            text=True,
            errors="replace",
            timeout=timeout_s,
        )
    except subprocess.TimeoutExpired:
        return BuildCheck(False, None, f"loading llama.cpp took over {timeout_s:.0f} s")
    report = None
    with contextlib.suppress(ValueError):
        report = json.loads(done.stdout)
    if done.returncode == 0:
        return BuildCheck(True, report, "")
    if done.returncode == BUILD_MISFIT_EXIT and isinstance(report, dict):
        missing = ", ".join(str(name) for name in report.get("missing", []))
        return BuildCheck(
            False, report, f"llama.cpp was built for CPU features this CPU lacks: {missing}"
        )
    if done.returncode < 0:
        name = signal.Signals(-done.returncode).name
        why = " (an instruction this CPU lacks)" if name == "SIGILL" else ""
        return BuildCheck(False, report, f"loading llama.cpp killed the process: {name}{why}")
    last = (done.stderr.strip().splitlines() or ["no message"])[-1]
    return BuildCheck(False, report, f"loading llama.cpp failed: {last}")


def main() -> int:
    from hearth.engine.buffer_types import cpu_report

    report = cpu_report()
    print(json.dumps(report.as_dict()))
    if report.missing:
        print(
            f"llama.cpp was built for {', '.join(report.missing)}, which this CPU "
            f"({report.model}) lacks: {REBUILD_HINT}",
            file=sys.stderr,
        )
        return BUILD_MISFIT_EXIT
    return 0


if __name__ == "__main__":
    sys.exit(main())
