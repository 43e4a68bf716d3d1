"""--cache-type-k/--cache-type-v through the real server: quantized KV caches answer and hold
less memory; combinations llama.cpp cannot run are refused at startup with one clear line."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.server.conftest import MODEL, HearthServer, start_server

pytestmark = pytest.mark.server

FLAGS = ("--parallel", "4", "--ctx-size", "4096")


def rss_mib(server: HearthServer) -> float:
    """The server's and its runner's: the KV cache lives in the runner."""
    return server.rss_kib() / 1024


def ps_size(server: HearthServer) -> int:
    (model,) = httpx.get(f"{server.base_url}/api/ps", timeout=10).json()["models"]
    size: int = model["size"]
    return size


def answer(server: HearthServer) -> str:
    reply = server.client().chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Name three colours of the rainbow."}],
        max_tokens=16,
        temperature=0,
    )
    assert reply.choices[0].finish_reason in ("stop", "length")
    return reply.choices[0].message.content or ""


def test_quantized_caches_answer_and_hold_less_memory(tmp_path: Path) -> None:
    with start_server(tmp_path / "f16", *FLAGS) as server:
        assert answer(server)
        f16_rss = rss_mib(server)
        f16_size = ps_size(server)
    with start_server(
        tmp_path / "q4", *FLAGS, "--cache-type-k", "q4_0", "--cache-type-v", "q4_0"
    ) as server:
        assert answer(server)
        q4_rss = rss_mib(server)
        q4_size = ps_size(server)
    # 16,384 cells of SmolLM2's f16 KV are 360 MiB; q4_0 stores the same in 101 MiB.
    assert f16_rss - q4_rss > 200, (f16_rss, q4_rss)
    # /api/ps (and --max-memory) count the KV cache at its own type.
    assert f16_size - q4_size == pytest.approx(360 * 2**20 * (1 - 18 / 64), rel=0.01)


def test_a_quantized_k_cache_runs_without_flash_attention(tmp_path: Path) -> None:
    with start_server(
        tmp_path, "--parallel", "1", "--cache-type-k", "q8_0", "--flash-attn", "off"
    ) as server:
        assert answer(server)


def test_a_quantized_v_cache_without_flash_attention_is_a_startup_error(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError) as failed:
        start_server(tmp_path, "--cache-type-v", "q8_0", "--flash-attn", "off")
    message = str(failed.value)
    assert "exited with 2" in message
    assert "--cache-type-v q8_0 needs flash attention" in message
    assert "Traceback" not in message


def test_an_unknown_cache_type_names_the_choices(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError) as failed:
        start_server(tmp_path, "--cache-type-k", "q5_1")
    message = str(failed.value)
    assert "exited with 2" in message
    assert "'q5_1' is not one of 'f16', 'q8_0', 'q4_0'" in message


def test_the_cache_types_come_from_the_environment_too(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="needs flash attention"):
        start_server(tmp_path, env={"HEARTH_CACHE_TYPE_V": "q4_0", "HEARTH_FLASH_ATTN": "off"})
