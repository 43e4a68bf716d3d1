"""The prompt cache across requests: a chat's next turn decodes only what is new."""

from __future__ import annotations

from pathlib import Path

import openai
import pytest

from tests.server.conftest import MODEL, start_server

pytestmark = pytest.mark.server

HISTORY = [
    {"role": "system", "content": "You are a terse assistant who knows geography."},
    {"role": "user", "content": "Which river flows through Paris?"},
]


def usage_of(reply: object) -> tuple[int, int]:
    usage = getattr(reply, "usage", None)
    assert usage is not None and usage.prompt_tokens_details is not None
    return usage.prompt_tokens, usage.prompt_tokens_details.cached_tokens or 0


def test_second_turn_reuses_the_first_turns_tokens(tmp_path: Path) -> None:
    with start_server(tmp_path, "--parallel", "2") as server:
        client = server.client()
        first = client.chat.completions.create(
            model=MODEL,
            messages=HISTORY,
            max_tokens=16,
            temperature=0,  # type: ignore[arg-type]
        )
        first_prompt, first_cached = usage_of(first)
        assert first_cached == 0

        second_turn = [
            *HISTORY,
            {"role": "assistant", "content": first.choices[0].message.content},
            {"role": "user", "content": "And through London?"},
        ]
        chunks = list(
            client.chat.completions.create(
                model=MODEL,
                messages=second_turn,  # type: ignore[arg-type]
                max_tokens=8,
                temperature=0,
                stream=True,
                stream_options={"include_usage": True},
            )
        )
        second_prompt, second_cached = usage_of(chunks[-1])
        # Everything up to the first answer came from the cache; only the new turn was decoded.
        assert second_cached >= first_prompt
        assert second_prompt - second_cached < second_prompt // 2
        engine = server.health()["engine"]
        assert engine["prompt_tokens_cached_total"] == second_cached


def test_cached_and_uncached_answers_are_identical(tmp_path: Path) -> None:
    request = {
        "model": MODEL,
        "messages": HISTORY,
        "max_tokens": 24,
        "temperature": 0.8,
        "seed": 1234,
    }
    with start_server(tmp_path, "--parallel", "1") as server:
        client: openai.OpenAI = server.client()
        cold = client.chat.completions.create(**request)  # type: ignore[call-overload]
        warm = client.chat.completions.create(**request)  # type: ignore[call-overload]
        assert usage_of(cold)[1] == 0
        assert usage_of(warm)[1] == usage_of(warm)[0] - 1  # all but the last prompt token
        assert warm.choices[0].message.content == cold.choices[0].message.content


def test_a_conversation_goes_back_to_its_own_slot(tmp_path: Path) -> None:
    with start_server(tmp_path, "--parallel", "3") as server:
        client = server.client()
        conversations = [
            [{"role": "user", "content": f"Conversation {i}: tell me about {topic}."}]
            for i, topic in enumerate(["whales", "volcanoes", "violins"])
        ]
        first_prompts = []
        for messages in conversations:
            reply = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=4)  # type: ignore[arg-type]
            first_prompts.append(usage_of(reply)[0])
        for messages, first_prompt in reversed(
            list(zip(conversations, first_prompts, strict=True))
        ):
            follow_up = [*messages, {"role": "user", "content": "More, please."}]
            reply = client.chat.completions.create(
                model=MODEL,
                messages=follow_up,
                max_tokens=4,  # type: ignore[arg-type]
            )
            # Everything but the "assistant" header matched: each conversation went back to the
            # slot holding its own history, not to one sharing only the system prompt.
            assert usage_of(reply)[1] >= first_prompt - 3


LONG_SYSTEM = (
    "You are a careful assistant for a small bakery. You answer questions about bread, "
    "cakes, opening hours and prices. Opening hours are eight to six on weekdays and nine to "
    "one on Saturdays; the bakery is closed on Sundays. Sourdough costs five euros, a baguette "
    "costs one euro twenty, and a slice of cake costs three euros. Always answer politely."
)


def test_a_shared_system_prompt_is_copied_between_slots_exactly(tmp_path: Path) -> None:
    def ask(client: openai.OpenAI, question: str) -> tuple[str, int, int]:
        reply = client.chat.completions.create(
            model=MODEL,
            messages=[
                {"role": "system", "content": LONG_SYSTEM},
                {"role": "user", "content": question},
            ],
            max_tokens=20,
            temperature=0.7,
            seed=99,
        )
        prompt, cached = usage_of(reply)
        return reply.choices[0].message.content or "", prompt, cached

    # Two slots: the second question takes the empty slot and copies the first one's KV.
    # One slot: the second question reuses the same slot's KV in place. Same cached prefix, same
    # tokens decoded on top of it: the answers must match token for token.
    with (
        start_server(tmp_path / "copying", "--parallel", "2") as copying,
        start_server(tmp_path / "in-place", "--parallel", "1") as in_place,
    ):
        answers = []
        for server in (copying, in_place):
            ask(server.client(), "When do you open on Saturday?")
            answers.append(ask(server.client(), "How much is a baguette?"))
        (copied_text, prompt, cached), (in_place_text, _, in_place_cached) = answers
        assert cached == in_place_cached > 64  # the system prompt came from the cache
        assert prompt - cached < 20
        assert copied_text == in_place_text
        # The first conversation kept its own slot: its next turn is a continuation.
        again = ask(copying.client(), "When do you open on Saturday?")
        assert again[2] == again[1] - 1


def test_without_flash_attention_cached_and_cold_answers_match_exactly(tmp_path: Path) -> None:
    # llama.cpp's CPU flash attention takes a tiled path for 64+ queries of one sequence, so a
    # prompt decoded whole and one decoded on top of a cache can differ in the last bits. With
    # --flash-attn off, every split of a prompt computes the same logits.
    request = {
        "model": MODEL,
        "max_tokens": 20,
        "temperature": 0.7,
        "seed": 99,
    }

    def messages(question: str) -> list[dict[str, str]]:
        return [{"role": "system", "content": LONG_SYSTEM}, {"role": "user", "content": question}]

    with (
        start_server(tmp_path / "warm", "--parallel", "1", "--flash-attn", "off") as warm,
        start_server(tmp_path / "cold", "--parallel", "1", "--flash-attn", "off") as cold,
    ):
        warm.client().chat.completions.create(
            messages=messages("Are you open on Sunday?"), **request
        )  # type: ignore[call-overload]
        cached = warm.client().chat.completions.create(
            messages=messages("How much is a baguette?"), **request
        )  # type: ignore[call-overload]
        fresh = cold.client().chat.completions.create(
            messages=messages("How much is a baguette?"), **request
        )  # type: ignore[call-overload]
        prompt, cached_tokens = usage_of(cached)
        assert cached_tokens > 64 and prompt - cached_tokens > 1  # several tokens on top
        assert usage_of(fresh)[1] == 0
        assert cached.choices[0].message.content == fresh.choices[0].message.content
