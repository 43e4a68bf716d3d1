"""Reasoning models: how a chat template marks the model's reasoning, read from the template.

Reasoning models (Qwen3, DeepSeek-R1 and its distills, SmolLM3, GLM, Kimi…) write their
reasoning in a block, `<think>…</think>`, before the answer. Their GGUFs say nothing about it
but the chat template, so `detect_reasoning` reads it from there, in two steps:

1. **The tags.** The first known tag pair whose open or close tag the source mentions. A template
   that only strips the block from earlier assistant turns (`content.split('</think>')[-1]`)
   still counts: the model writes the whole block itself.
2. **The generation prompt.** One user message is rendered with `add_generation_prompt=True`,
   with the switch on (or absent) and off. If the text after the user's message ends inside an
   open block, the model's output starts inside the reasoning (`opens_in_prompt`, as in
   DeepSeek-R1's and Qwen3-Thinking-2507's templates). If it holds a close tag with the switch
   off, the template closes an empty block to turn thinking off (Qwen3's `<think>\\n\\n</think>`).

gpt-oss reasons in a channel (`<|channel|>analysis`), not in a tagged block: not handled here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from jinja2 import Environment, meta

__all__ = ["TAG_PAIRS", "ChatTemplate", "ReasoningFormat", "detect_reasoning", "template_variables"]


class ChatTemplate(Protocol):
    """What reading a template needs of models/chat_template.py's ChatTemplate (which uses this
    module to detect its reasoning, so this module names only the part it reads)."""

    @property
    def source(self) -> str: ...

    def render(
        self,
        messages: list[dict[str, Any]],
        *,
        add_generation_prompt: bool = True,
        tools: list[dict[str, Any]] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> str: ...


# Known (open, close) tags, in the order they are tried.
TAG_PAIRS: tuple[tuple[str, str], ...] = (
    ("<think>", "</think>"),  # Qwen3, DeepSeek-R1, SmolLM3, GLM-4.5, Granite…
    ("<thinking>", "</thinking>"),
    ("<|begin_of_thought|>", "<|end_of_thought|>"),  # OpenThinker-style
    ("◁think▷", "◁/think▷"),  # Kimi
)
# Template variables that turn thinking on and off, in the order they are tried.
_SWITCHES = ("enable_thinking", "thinking", "enable_reasoning", "reasoning")
# gpt-oss's harmony format: reasoning in the analysis channel, not a tagged block.
_CHANNEL_MARKER = "<|channel|>"
# A user message to render, distinct enough to find in the rendered text.
_PROBE = "Hearth reasoning probe: what is 2 + 2?"

# Parses only (find_undeclared_variables needs an AST); rendering stays in ChatTemplate's sandbox.
_PARSER = Environment(extensions=["jinja2.ext.loopcontrols"])
# ChatTemplate's own globals: read by templates, but not variables a request can set.
_TEMPLATE_GLOBALS = frozenset({"raise_exception", "strftime_now"})


@dataclass(frozen=True, slots=True)
class ReasoningFormat:
    open_tag: str
    close_tag: str
    # With thinking on, the generation prompt already ends inside an open block: the model's
    # output starts inside the reasoning, with no open tag of its own.
    opens_in_prompt: bool
    # The template variable that turns thinking on and off, when the template reads one.
    switch: str | None
    # With the switch off, the generation prompt holds an empty closed block.
    closes_in_prompt_when_off: bool


def template_variables(template: ChatTemplate) -> frozenset[str]:
    """The variables the template reads but never sets (messages, add_generation_prompt,
    enable_thinking…), less Jinja's and Hearth's globals. A `chat_template_kwargs` key outside
    this set would change nothing. As Jinja's own analysis does, a name the template sets on
    only some branches (Qwen3's `content`) counts as read. The names `ChatTemplate.render` sets
    itself (`RENDER_VARIABLES`) are included when read; `render` refuses them in `extra`."""
    ast = _PARSER.parse(template.source)
    names = meta.find_undeclared_variables(ast)
    return frozenset(names - _PARSER.globals.keys() - _TEMPLATE_GLOBALS)


def detect_reasoning(template: ChatTemplate) -> ReasoningFormat | None:
    """The reasoning format the template implies, or None for a model that does not reason."""
    source = template.source
    if _CHANNEL_MARKER in source:
        return None
    pair = next(((o, c) for o, c in TAG_PAIRS if o in source or c in source), None)
    if pair is None:
        return None
    open_tag, close_tag = pair
    variables = template_variables(template)
    switch = next((name for name in _SWITCHES if name in variables), None)

    on = _generation_prompt(template, {switch: True} if switch else None)
    opens = on is not None and on.rfind(open_tag) > on.rfind(close_tag)
    closes_when_off = False
    if switch is not None:
        off = _generation_prompt(template, {switch: False})
        closes_when_off = off is not None and close_tag in off
    return ReasoningFormat(
        open_tag=open_tag,
        close_tag=close_tag,
        opens_in_prompt=opens,
        switch=switch,
        closes_in_prompt_when_off=closes_when_off,
    )


def _generation_prompt(template: ChatTemplate, extra: dict[str, object] | None) -> str | None:
    """What the template renders after one user message, or None if it refuses to render one
    (then the prompt cannot be read, and nothing is assumed to open there)."""
    messages = [{"role": "user", "content": _PROBE}]
    try:
        text = template.render(messages, add_generation_prompt=True, extra=extra)
    except Exception:  # a template's own bug must not stop its model from loading
        return None
    at = text.rfind(_PROBE)
    return text[at + len(_PROBE) :] if at >= 0 else text
