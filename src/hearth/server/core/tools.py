"""Tool calling for any model: the prompt that describes the tools, the grammar that constrains
the call, and the parser that turns the output back into OpenAI `tool_calls`.

The format is Hermes' (also Qwen's), which many small models have seen in training:

    <tool_call>
    {"name": "get_weather", "arguments": {"city": "Paris"}}
    </tool_call>

A model whose chat template lays out tools itself in this format gets them through its template;
any other (SmolLM2, Gemma 3) gets `tool_system_prompt` ahead of its own system prompt. The
grammar makes the call well-formed: `required` and a named function must call (with arguments
valid under the function's schema); `auto` may answer in text, and is constrained from the
moment it writes `<tool_call>` (a lazy grammar).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from hearth.engine.grammar import GrammarBuilder
from hearth.engine.types import Grammar

__all__ = [
    "CALL_CLOSE",
    "CALL_OPEN",
    "ParsedCall",
    "ToolCallParser",
    "ToolSpec",
    "partial_suffix",
    "render_call",
    "tool_grammar",
    "tool_system_prompt",
]

CALL_OPEN = "<tool_call>\n"
CALL_CLOSE = "}\n</tool_call>"
_NAME_OPEN = '{"name": "'
_ARGUMENTS_OPEN = '", "arguments": '
_CALL_SEPARATOR = "\n"


@dataclass(frozen=True, slots=True)
class ToolSpec:
    name: str
    description: str
    parameters: dict[str, Any]


def render_call(name: str, arguments: str) -> str:
    """An earlier call, written back into the conversation the way the model writes one."""
    return f"{CALL_OPEN}{_NAME_OPEN}{name}{_ARGUMENTS_OPEN}{arguments}{CALL_CLOSE}"


def tool_system_prompt(tools: list[ToolSpec]) -> str:
    """The same text whatever the tool choice: the grammar, not the prompt, makes a model call
    when it must, so an agent's turns (tool_choice "required", then "auto") share their prompt's
    first tokens and the KV cache that holds them."""
    signatures = "\n".join(
        json.dumps(
            {
                "type": "function",
                "function": {
                    "name": t.name,
                    "description": t.description,
                    "parameters": t.parameters,
                },
            },
            ensure_ascii=False,
        )
        for t in tools
    )
    return (
        "You can call functions. Their signatures, in JSON Schema, are within <tools></tools>:\n"
        f"<tools>\n{signatures}\n</tools>\n"
        "To call a function, write a JSON object with its name and arguments within "
        "<tool_call></tool_call> tags:\n"
        + render_call("function-name", "{...}")
        + "\nCall a function when it helps to answer; otherwise answer directly."
    )


def tool_grammar(tools: list[ToolSpec], *, lazy: bool, parallel: bool) -> Grammar:
    """Calls to `tools` only. `lazy`: free text until the model opens a call (tool_choice auto)."""
    builder = GrammarBuilder()
    alternatives = []
    for i, tool in enumerate(tools):
        arguments = builder.add_schema(tool.parameters or {"type": "object"}, f"fn{i}-arguments")
        alternatives.append(f"{builder.literal(tool.name + _ARGUMENTS_OPEN)} {arguments}".strip())
    call = (
        f"{builder.literal(CALL_OPEN + _NAME_OPEN)} ( {' | '.join(alternatives)} ) "
        f"{builder.literal(CALL_CLOSE)}"
    )
    root = f"{call} ( {builder.literal(_CALL_SEPARATOR)} {call} )*" if parallel else call
    # llama.cpp matches a trigger against all the output so far; the grammar starts at the group.
    triggers = (r"[\s\S]*?(<tool_call>)[\s\S]*",) if lazy else ()
    return builder.build(root, triggers)


@dataclass(slots=True)
class ParsedCall:
    index: int
    id: str
    name: str
    arguments: str = ""


@dataclass(slots=True)
class ToolCallParser:
    """Splits streamed output into content and tool calls, holding back only text that may be
    the start of a marker. Events: ("content", text), ("call", ParsedCall) when a call's name is
    known, ("arguments", text) as its arguments arrive."""

    calls: list[ParsedCall] = field(default_factory=list)
    _buffer: str = ""
    _state: str = "content"  # content | name | arguments

    def feed(self, text: str) -> Iterator[tuple[str, Any]]:
        self._buffer += text
        while True:
            if self._state == "content":
                start = self._buffer.find(CALL_OPEN + _NAME_OPEN)
                if start < 0:
                    keep = partial_suffix(self._buffer, CALL_OPEN + _NAME_OPEN)
                    cut = len(self._buffer) - keep
                    if not self._buffer[:cut].strip():
                        return  # only blank so far: it may just separate two calls
                    emit, self._buffer = self._split(cut)
                    yield "content", emit
                    return
                emit, rest = self._split(start)
                if emit.strip():
                    yield "content", emit
                self._buffer = rest[len(CALL_OPEN + _NAME_OPEN) :]
                self._state = "name"
            elif self._state == "name":
                end = self._buffer.find(_ARGUMENTS_OPEN)
                if end < 0:
                    return
                call = ParsedCall(
                    index=len(self.calls),
                    id=f"call_{uuid.uuid4().hex[:24]}",
                    name=self._buffer[:end],
                )
                self.calls.append(call)
                self._buffer = self._buffer[end + len(_ARGUMENTS_OPEN) :]
                self._state = "arguments"
                yield "call", call
            else:
                end = self._buffer.find(CALL_CLOSE)
                if end < 0:
                    keep = partial_suffix(self._buffer, CALL_CLOSE)
                    # Trailing spaces may come before the close marker; hold them too.
                    cut = len(self._buffer) - keep
                    while cut > 0 and self._buffer[cut - 1].isspace():
                        cut -= 1
                    emit, self._buffer = self._split(cut)
                    if emit:
                        self.calls[-1].arguments += emit
                        yield "arguments", emit
                    return
                emit = self._buffer[:end].rstrip()
                self._buffer = self._buffer[end + len(CALL_CLOSE) :].lstrip("\n")
                self._state = "content"
                if emit:
                    self.calls[-1].arguments += emit
                    yield "arguments", emit

    @property
    def in_call(self) -> bool:
        """A call is open: its name or arguments are still arriving."""
        return self._state != "content"

    def finish(self) -> Iterator[tuple[str, Any]]:
        """The end of the output: whatever was held back (a call cut short stays cut short)."""
        rest, self._buffer = self._buffer, ""
        if not rest:
            return
        if self._state == "arguments":
            self.calls[-1].arguments += rest
            yield "arguments", rest
        elif self._state == "content" and (rest.strip() or not self.calls):
            yield "content", rest

    def _split(self, at: int) -> tuple[str, str]:
        return self._buffer[:at], self._buffer[at:]


def partial_suffix(text: str, marker: str) -> int:
    """The length of the longest end of `text` that is a proper start of `marker`."""
    for n in range(min(len(marker) - 1, len(text)), 0, -1):
        if text.endswith(marker[:n]):
            return n
    return 0
