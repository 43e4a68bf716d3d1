"""AMX proven on this machine before a model's weights go to it (`--repack auto`).

llama.cpp's AMX kernels kill the process on some Xeons at the first decode of a prompt, and
whether they do depends on the batch shape (a 2-token prompt survived, a chat prompt did not):
a short probe proves nothing. So the probe loads the model in a child process with every buffer
type offered and decodes the engine's own shapes: a full prefill batch, prompts of many sizes,
steps of 1 to `--parallel` rows, a prefill chunk beside decoding rows, and a draft verified.
The child dying, hanging or producing non-finite logits is a "crashed" verdict.

Verdicts are kept per user (`$XDG_CACHE_HOME/hearth/amx-probes.json`), keyed by CPU model,
microcode, kernel, llama.cpp build and the model's weight types, so a machine pays for a probe
once per build and kind of model, not at every start (test servers included).

`python -m hearth.engine.amx_probe_child CONFIG_JSON` is the child.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from hearth.engine.cpu import (
    AMX_BUFFER_TYPE,
    CpuInfo,
    ProbeVerdict,
    RepackMode,
    WeightPlacement,
    cache_dir,
    choose_buffer_types,
    read_cpu,
)

__all__ = [
    "OK_LINE",
    "ProbeShape",
    "VerdictStore",
    "describe_placement",
    "plan_weights",
    "run_probe_command",
    "verdict_key",
]

logger = logging.getLogger(__name__)

VERDICTS_FILE = "amx-probes.json"
# A probe prefills one full batch on the CPU: minutes for a big model, never a hang.
PROBE_TIMEOUT_S = 900.0
OK_LINE = "hearth-amx-probe: ok"  # what the child prints once every shape decoded


@dataclass(frozen=True, slots=True)
class ProbeShape:
    """The engine's shapes the probe decodes: what the server will ask of the kernels."""

    n_slots: int
    n_batch: int
    n_prefill: int
    n_threads: int


def verdict_key(cpu: CpuInfo, build: str, weight_types: Sequence[str]) -> str:
    kernel = os.uname().release if hasattr(os, "uname") else ""
    return " | ".join((cpu.model, cpu.microcode, kernel, build, ",".join(sorted(weight_types))))


class VerdictStore:
    """The probes' verdicts in one JSON file, written whole and atomically (servers starting
    together each merge theirs into what is on disk)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def _read(self) -> dict[str, dict[str, object]]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def get(self, key: str) -> ProbeVerdict | None:
        entry = self._read().get(key)
        verdict = entry.get("verdict") if isinstance(entry, dict) else None
        return verdict if verdict in ("works", "crashed") else None

    def verdicts(self, prefix: str) -> dict[str, ProbeVerdict]:
        """The weight types -> verdict of every key that starts with `prefix`."""
        found: dict[str, ProbeVerdict] = {}
        for key, entry in self._read().items():
            verdict = entry.get("verdict") if isinstance(entry, dict) else None
            if key.startswith(prefix + " | ") and verdict in ("works", "crashed"):
                found[key.rsplit(" | ", 1)[1]] = verdict
        return found

    def put(self, key: str, verdict: ProbeVerdict, detail: str) -> None:
        data = self._read()
        data[key] = {"verdict": verdict, "detail": detail, "at": int(time.time())}
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(
                "w", dir=self.path.parent, suffix=".tmp", delete=False, encoding="utf-8"
            ) as file:
                json.dump(data, file, indent=1)
            os.replace(file.name, self.path)
        except OSError as exc:  # a read-only home: the verdict holds for this process only
            logger.warning("Could not keep the AMX probe's verdict in %s: %s", self.path, exc)


def run_probe_command(argv: Sequence[str], timeout_s: float) -> tuple[ProbeVerdict, str]:
    """Run a probe child; "works" only if it exits 0 after printing its ok line."""
    try:
        done = subprocess.run(
            list(argv), capture_output=True, text=True, errors="replace", timeout=timeout_s
        )
    except subprocess.TimeoutExpired:
        return "crashed", f"no answer in {timeout_s:.0f} s"
    if done.returncode == 0 and OK_LINE in done.stdout:
        return "works", "decoded every shape"
    if done.returncode < 0:
        return "crashed", f"killed by {signal.Signals(-done.returncode).name}"
    last = (done.stderr.strip().splitlines() or ["no message"])[-1]
    return "crashed", f"exit code {done.returncode}: {last}"


def _probe(model_path: Path, shape: ProbeShape, timeout_s: float) -> tuple[ProbeVerdict, str]:
    config = {
        "model_path": str(model_path),
        "n_slots": shape.n_slots,
        "n_batch": shape.n_batch,
        "n_prefill": shape.n_prefill,
        "n_threads": shape.n_threads,
    }
    return run_probe_command(
        [sys.executable, "-m", "hearth.engine.amx_probe_child", json.dumps(config)], timeout_s
    )


def plan_weights(
    mode: RepackMode, model_path: Path, weight_types: Sequence[str], shape: ProbeShape
) -> WeightPlacement:
    """The buffer types one load of `model_path` may use, probing AMX first when `auto` must
    know whether it works here."""
    from hearth.engine.buffer_types import build_id, extra_buffer_types

    cpu = read_cpu()
    available = extra_buffer_types()
    amx_possible = AMX_BUFFER_TYPE in available and cpu.has("AMX_INT8")
    store = VerdictStore(Path(cache_dir()) / VERDICTS_FILE)
    key = verdict_key(cpu, build_id(), weight_types) if amx_possible else ""
    verdict = store.get(key) if mode == "auto" and amx_possible else None
    placement = choose_buffer_types(mode, available, cpu, verdict)
    if not placement.needs_probe:
        return placement
    logger.info(
        "Probing llama.cpp's AMX kernels with %s in a child process (once per machine, "
        "build and kind of weights)",
        model_path.name,
    )
    started = time.monotonic()
    verdict, detail = _probe(model_path, shape, PROBE_TIMEOUT_S)
    store.put(key, verdict, detail)
    if verdict == "crashed":
        logger.warning(
            "llama.cpp's AMX kernels crashed on this CPU (%s); serving without them, with the "
            "other repacked layouts (--repack on forces AMX)",
            detail,
        )
    else:
        logger.info("AMX works here (probe took %.1f s)", time.monotonic() - started)
    return choose_buffer_types(mode, available, cpu, verdict)


def describe_placement(mode: RepackMode) -> str:
    """What a load under `mode` does with weights on this machine, for `hearth devices`."""
    from hearth.engine.buffer_types import build_id, extra_buffer_types

    cpu = read_cpu()
    placement = choose_buffer_types(mode, extra_buffer_types(), cpu, None)
    if not placement.offered:
        return f"weights stay as stored, in plain CPU memory ({placement.reason})"
    offered = ", ".join(placement.offered) or "none"
    text = f"weights go to {offered} where it has kernels for them, else plain CPU memory"
    if not placement.needs_probe:
        return f"{text} ({placement.reason})"
    prefix = verdict_key(cpu, build_id(), ()).rsplit(" | ", 1)[0]
    known = VerdictStore(Path(cache_dir()) / VERDICTS_FILE).verdicts(prefix)
    proven = [types for types, verdict in known.items() if verdict == "works"]
    crashed = [types for types, verdict in known.items() if verdict == "crashed"]
    return (
        f"{text}; AMX too for weights a probe proved ({', '.join(proven) or 'none yet'}), "
        f"never for those it crashed on ({', '.join(crashed) or 'none'}); a probe runs at "
        "the first load of any other kind of weights"
    )
