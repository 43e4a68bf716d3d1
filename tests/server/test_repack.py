"""--repack: weights repacked into the CPU's fast layouts where that is safe (engine/cpu.py).

Through the real server: `--quantize q4_0` under `auto` puts its weights in CPU_REPACK (never in
AMX without a probe's proof) and answers chat, streams and embeddings; `off` keeps them as
stored. In process: a load leaves out exactly the buffer types it is told to, as `auto` leaves
out AMX, and the next load gets them back. The AMX probe's child decodes the engine's shapes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from hearth.engine.cpu import read_cpu
from hearth.models import registry
from tests.server.conftest import MODEL, start_server

pytestmark = pytest.mark.server

FLAGS = ("--parallel", "2", "--ctx-size", "512")


def _weights(health: dict[str, object]) -> dict[str, object]:
    (model,) = health["models"]  # type: ignore[misc]
    weights: dict[str, object] = model["weights"]
    return weights


def test_q4_0_under_auto_is_repacked_and_answers(tmp_path: Path) -> None:
    with start_server(tmp_path, "--quantize", "q4_0", *FLAGS) as server:
        health = server.health()
        weights = _weights(health)
        buffers = weights["buffer_types"]
        assert isinstance(buffers, dict)
        assert weights["repack"] == "auto"
        assert buffers.get("CPU_REPACK", 0) > 0, weights
        assert "AMX" not in buffers, weights  # no probe has proven it on this machine
        cpu = health["cpu"]
        assert cpu["build_fits"] is True and "REPACK" in cpu["build_features"]
        assert sorted(cpu["features"]) == sorted(read_cpu().features)

        client = server.client()
        chat = [{"role": "user", "content": "Name three colours of the rainbow."}]
        reply = client.chat.completions.create(model=MODEL, messages=chat, max_tokens=8)
        assert reply.usage is not None and reply.usage.completion_tokens > 0
        streamed = client.chat.completions.create(
            model=MODEL, messages=chat, max_tokens=8, stream=True
        )
        assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices)
        embedding = client.embeddings.create(model=MODEL, input="a red apple")
        assert len(embedding.data[0].embedding) == 576

        devices = subprocess.run(
            [sys.executable, "-m", "hearth", "devices", "--port", str(server.port)],
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert devices.returncode == 0, devices.stderr
    assert "fits this CPU" in devices.stdout and "repack     auto:" in devices.stdout
    assert all(feature in devices.stdout for feature in read_cpu().features)
    assert f"{MODEL} (serving at" in devices.stdout and "CPU_REPACK" in devices.stdout


def test_off_keeps_the_weights_as_stored(tmp_path: Path) -> None:
    env = {"HEARTH_REPACK": "off"}
    with start_server(tmp_path, "--quantize", "q4_0", *FLAGS, env=env) as server:
        weights = _weights(server.health())
        assert weights["repack"] == "off"
        assert weights["offered"] == []
        assert list(weights["buffer_types"]) == ["CPU_Mapped"]  # type: ignore[arg-type]
        reply = server.client().chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=4
        )
        assert reply.usage is not None and reply.usage.completion_tokens > 0


def test_a_load_leaves_out_exactly_the_types_it_is_told_to(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """How `auto` leaves out AMX, shown on CPU_REPACK (every x86-64 and ARM build has it): the
    load offered nothing gets none, the earlier model keeps decoding, the next load has it."""
    from hearth.engine import amx_probe
    from hearth.engine.cpu import WeightPlacement
    from hearth.engine.llama_runner import LlamaRunner, RunnerConfig
    from hearth.engine.quantize import quantize
    from hearth.engine.scheduler import Chunk

    q4_0 = quantize(registry.embedded_model_path(), "q4_0", tmp_path / "q4_0.gguf", 2)
    config = RunnerConfig(model_path=q4_0, n_slots=1, n_ctx_per_slot=256, n_threads=2, n_batch=64)
    repacked = LlamaRunner(config)
    assert repacked.weights.buffers.get("CPU_REPACK", 0) > 0
    plan = amx_probe.plan_weights
    left_out = WeightPlacement("auto", True, (), ("CPU_REPACK",), "left out by the test")
    monkeypatch.setattr(amx_probe, "plan_weights", lambda *_: left_out)
    plain = LlamaRunner(config)
    monkeypatch.setattr(amx_probe, "plan_weights", plan)
    again = LlamaRunner(config)
    try:
        assert "CPU_REPACK" not in plain.weights.buffers
        assert again.weights.buffers.get("CPU_REPACK", 0) > 0
        tokens = plain.tokenize("The sky is", add_special=True, parse_special=False)
        chunk = Chunk(None, 0, 0, tokens, True)  # type: ignore[arg-type]
        top = []
        for runner in (repacked, plain, again):
            assert runner.decode([chunk]) == 0
            top.append(runner.token_logprob(len(tokens) - 1, 0, 1).top[0][0])
        assert top[0] == top[1] == top[2]  # the same greedy token from every layout
    finally:
        for runner in (repacked, plain, again):
            runner.close()


def test_the_probe_child_decodes_the_engine_shapes(tmp_path: Path) -> None:
    """The child that proves AMX runs a full prefill batch, prompts of many sizes, 1 to
    --parallel rows, a prefill chunk beside rows and a draft; here (whatever the CPU) it must
    get through all of them."""
    from hearth.engine.amx_probe import run_probe_command

    config = {
        "model_path": str(registry.embedded_model_path()),
        "n_slots": 4,
        "n_batch": 256,
        "n_prefill": 64,
        "n_threads": 2,
    }
    command = [sys.executable, "-m", "hearth.engine.amx_probe_child", json.dumps(config)]
    assert run_probe_command(command, 300) == ("works", "decoded every shape")
