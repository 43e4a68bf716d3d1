"""The affinity key: what a conversation keeps from one turn to the next, so that every turn goes
to the replica whose KV cache holds it. Pure: headers and body in, a key (or None) out.

Each turn of a chat resends the whole history, so its start is the same on every turn: the model,
the system prompt or instructions, and the messages up to the first user message. Raw prompts
(/v1/completions, /api/generate) keep their first characters. An `x-session-id` header, when a
client sends one, wins. Requests with nothing conversational (GET, embeddings) get no key and go
to whichever replica is least busy.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

__all__ = ["SESSION_HEADER", "affinity_key"]

SESSION_HEADER = "x-session-id"
# A raw prompt's first characters: long enough to tell system prompts apart, short enough that a
# prompt growing turn by turn keeps its key.
PROMPT_PREFIX_CHARS = 2048
# Where a conversation's opening is: the fields each API sends its system text and turns in.
_SYSTEM_FIELDS = ("system", "instructions")
_TURN_FIELDS = ("messages", "input")
_PROMPT_FIELDS = ("prompt",)


def _opening(turns: list[Any]) -> list[Any]:
    """The turns up to and including the first user turn: the part no later turn changes."""
    for index, turn in enumerate(turns):
        if isinstance(turn, Mapping) and turn.get("role") == "user":
            return turns[: index + 1]
    return turns[:1]


def _parts(body: Mapping[str, Any]) -> list[Any]:
    parts: list[Any] = []
    for name in _SYSTEM_FIELDS:
        if body.get(name):
            parts.append({name: body[name]})
    for name in _TURN_FIELDS:
        turns = body.get(name)
        if isinstance(turns, list) and turns:
            parts.append({name: _opening(turns)})
        elif isinstance(turns, str) and turns:
            parts.append({name: turns[:PROMPT_PREFIX_CHARS]})
    for name in _PROMPT_FIELDS:
        prompt = body.get(name)
        if isinstance(prompt, str) and prompt:
            parts.append({name: prompt[:PROMPT_PREFIX_CHARS]})
    return parts


def affinity_key(method: str, headers: Mapping[str, str], body: bytes) -> str | None:
    """The key a request is routed by: `x-session-id` when sent, else the model and the opening
    of the conversation in a JSON body, else None (no affinity)."""
    session = headers.get(SESSION_HEADER, "").strip()
    if session:
        return f"session:{session}"
    if method != "POST" or not body:
        return None
    try:
        parsed = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(parsed, dict):
        return None
    parts = _parts(parsed)
    if not parts:
        return None
    model = parsed.get("model")
    canonical = json.dumps([model, parts], sort_keys=True, ensure_ascii=False, default=str)
    return "conversation:" + hashlib.sha256(canonical.encode()).hexdigest()[:32]
