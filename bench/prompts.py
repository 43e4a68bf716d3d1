"""The benchmark's requests, shared by bench.py (through the servers) and ceiling.py (bare)."""

from __future__ import annotations

__all__ = ["TOPICS", "chat_messages", "story_text"]

TOPICS = (
    "a lighthouse keeper",
    "a lost robot",
    "a dragon who hates fire",
    "the last tree on Mars",
    "a talking cat",
    "a haunted library",
    "a time-travelling baker",
    "a shy volcano",
    "a detective snail",
    "the moon's day off",
    "a pirate who cannot swim",
    "a clock that runs backwards",
    "a city under the sea",
    "a forgetful wizard",
    "a dog who learns to paint",
    "the first snowflake of winter",
)


def story_text(index: int) -> str:
    """Request `index`'s user message: one topic each, distinct text (no shared cached prefix)."""
    topic = TOPICS[index % len(TOPICS)]
    suffix = f" Version {index // len(TOPICS) + 1}." if index >= len(TOPICS) else ""
    return f"Write a long story about {topic}.{suffix}"


def chat_messages(index: int, variant: int | None = None) -> list[dict[str, str]]:
    """Request `index`'s chat. With a `variant`, a system message that starts with it comes
    first: the rendered prompts of two variants then share only the template's first tokens, so
    no server can answer a later round from an earlier round's KV cache."""
    user = {"role": "user", "content": story_text(index)}
    if variant is None:
        return [user]
    return [{"role": "system", "content": f"Run {variant}. You are a helpful assistant."}, user]
