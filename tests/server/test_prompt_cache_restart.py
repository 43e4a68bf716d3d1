"""The prompt cache survives a restart: a graceful stop saves the slots' KV caches under
HEARTH_HOME, and the next server restores a conversation's prefix instead of decoding it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.server.conftest import MODEL, HearthServer, start_server

pytestmark = pytest.mark.server

# --flash-attn off: the answer does not depend on how the prompt was split between cache and
# batch, so a restored conversation answers exactly as one decoded from scratch.
FLAGS = ("--parallel", "1", "--ctx-size", "2048", "--flash-attn", "off")

TOPICS = [
    "the history of lighthouses along rocky coasts",
    "how bread dough rises and why salt slows yeast",
    "the migration routes of arctic terns",
    "why copper roofs turn green over the years",
    "how a pendulum clock keeps time",
    "the way rivers carve meanders across flat plains",
]


def long_conversation(paragraphs: int) -> list[dict[str, str]]:
    """A chat of `paragraphs` user/assistant exchanges, about 250 tokens each."""
    messages = [{"role": "system", "content": "You are a patient teacher who answers briefly."}]
    for i in range(paragraphs):
        topic = TOPICS[i % len(TOPICS)]
        question = f"Question {i + 1}: please tell me about {topic}. " * 6
        answer = (
            f"Answer {i + 1}: {topic.capitalize()} is a subject with a long story; "
            "people observed it, wrote notes, argued about causes and slowly agreed. " * 3
        )
        messages += [
            {"role": "user", "content": question.strip()},
            {"role": "assistant", "content": answer.strip()},
        ]
    messages.append({"role": "user", "content": "Which of these topics is the oldest?"})
    return messages


def ask(server: HearthServer, messages: list[dict[str, str]]) -> tuple[str, int, int]:
    """(answer, prompt tokens, cached tokens) of a greedy turn."""
    reply: Any = server.client().chat.completions.create(
        model=MODEL,
        messages=messages,  # type: ignore[arg-type]
        max_tokens=12,
        temperature=0,
    )
    usage = reply.usage
    cached = usage.prompt_tokens_details.cached_tokens if usage.prompt_tokens_details else 0
    return reply.choices[0].message.content or "", usage.prompt_tokens, cached or 0


def next_turn(messages: list[dict[str, str]], answer: str) -> list[dict[str, str]]:
    return [
        *messages,
        {"role": "assistant", "content": answer},
        {"role": "user", "content": "And which is the youngest?"},
    ]


def saved_states(tmp_path: Path) -> list[Path]:
    return sorted((tmp_path / "home" / "prompt-cache").glob("*/*.kv"))


def test_a_restart_restores_a_saved_conversation(tmp_path: Path) -> None:
    first = long_conversation(6)
    with start_server(tmp_path, *FLAGS) as server:
        answer, first_prompt, first_cached = ask(server, first)
        assert first_cached == 0
        assert 1300 <= first_prompt <= 1900, first_prompt
        assert server.stop() == 0
        log = server.log()
    assert "Saved the KV caches of 1 slots to disk" in log
    assert len(saved_states(tmp_path)) == 1

    second = next_turn(first, answer)
    with start_server(tmp_path, *FLAGS) as server:
        restored_answer, second_prompt, restored = ask(server, second)
        # The whole first turn came back from disk: its prompt and the answer's tokens.
        assert restored >= first_prompt
        assert second_prompt - restored < 40
        assert server.health()["engine"]["prompt_tokens_cached_total"] == restored
        server.stop()
        assert "Restored" in server.log()

    # The same turn decoded from scratch, with the disk cache off, answers the same.
    with start_server(tmp_path, *FLAGS, "--prompt-cache-disk", "0") as server:
        cold_answer, _, cold_cached = ask(server, second)
    assert cold_cached == 0
    assert restored_answer == cold_answer


def test_a_corrupt_saved_state_is_ignored_with_a_warning(tmp_path: Path) -> None:
    first = long_conversation(2)
    with start_server(tmp_path, *FLAGS) as server:
        answer, _, _ = ask(server, first)
    (state,) = saved_states(tmp_path)
    data = bytearray(state.read_bytes())
    for offset in range(len(data) // 3, len(data) // 3 + 64):
        data[offset] ^= 0x5A
    state.write_bytes(bytes(data))

    with start_server(tmp_path, *FLAGS) as server:
        text, prompt, cached = ask(server, next_turn(first, answer))
        log = server.log()
    assert text and cached == 0 and prompt > 0
    assert "Ignoring the saved prompt cache" in log and "checksum" in log
    assert "Traceback" not in log
    assert not state.exists()


def test_off_saves_nothing(tmp_path: Path) -> None:
    with start_server(tmp_path, *FLAGS, "--prompt-cache-disk", "0") as server:
        ask(server, long_conversation(1))
    assert saved_states(tmp_path) == []


def test_a_bad_size_is_a_clear_startup_error(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="prompt-cache-disk"):
        start_server(tmp_path, "--prompt-cache-disk", "lots")
