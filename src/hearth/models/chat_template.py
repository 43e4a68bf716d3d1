"""Chat templates: the model's own Jinja template from its GGUF, rendered in a sandbox.

Rendering follows Hugging Face transformers and llama.cpp's minja: `messages`,
`add_generation_prompt`, `bos_token`, `eos_token`, plus `raise_exception` and `strftime_now`.
A model with no `tokenizer.chat_template` gets ChatML (FALLBACK_TEMPLATE), the format most
instruction-tuned GGUFs without a template were trained on, as llama.cpp's server does.
"""

from __future__ import annotations

import json
from datetime import datetime
from functools import cached_property
from typing import Any

from jinja2 import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from hearth.errors import InvalidRequestError
from hearth.models.reasoning import ReasoningFormat, detect_reasoning

__all__ = ["FALLBACK_TEMPLATE", "GEMMA_TEMPLATE", "RENDER_VARIABLES", "ChatTemplate"]

FALLBACK_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


# Gemma's turn format, for Gemma GGUFs that ship without a template (the bundled gemma3:270m):
# no system role, so system text opens the next user turn, as Google's own template does.
GEMMA_TEMPLATE = (
    "{{ bos_token }}{% set ns = namespace(system='') %}"
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{% set ns.system = ns.system + message['content'] + "
    "'\n\n' %}"
    "{% elif message['role'] == 'assistant' %}"
    "{{ '<start_of_turn>model\n' + message['content'] | trim + '<end_of_turn>\n' }}"
    "{% else %}"
    "{{ '<start_of_turn>user\n' + ns.system + message['content'] | trim + '<end_of_turn>\n' }}"
    "{% set ns.system = '' %}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
)
# The variables `ChatTemplate.render` sets itself; `extra` may not override them.
RENDER_VARIABLES = frozenset(
    {"messages", "add_generation_prompt", "bos_token", "eos_token", "tools"}
)

# Templates for models whose GGUF has none, by llama.cpp's architecture name.
_BY_ARCHITECTURE = {"gemma": GEMMA_TEMPLATE, "gemma2": GEMMA_TEMPLATE, "gemma3": GEMMA_TEMPLATE}


def _raise_exception(message: str) -> None:
    raise TemplateError(message)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


def _tojson(value: Any, indent: int | None = None, **_: Any) -> str:
    return json.dumps(value, ensure_ascii=False, indent=indent)


class ChatTemplate:
    def __init__(
        self,
        source: str | None,
        *,
        bos_token: str = "",
        eos_token: str = "",
        architecture: str = "",
    ) -> None:
        self.source = source or _BY_ARCHITECTURE.get(architecture, FALLBACK_TEMPLATE)
        self.is_fallback = source is None
        self.bos_token = bos_token
        self.eos_token = eos_token
        env = ImmutableSandboxedEnvironment(
            trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"]
        )
        env.filters["tojson"] = _tojson
        env.globals["raise_exception"] = _raise_exception
        env.globals["strftime_now"] = _strftime_now
        self._template = env.from_string(self.source)

    @property
    def renders_tool_calls(self) -> bool:
        """Whether the template lays out tools and tool calls itself in the `<tool_call>` format
        (Hermes, Qwen) that Hearth constrains and parses; otherwise Hearth describes the tools
        in the system prompt (`hearth.server.core.tools`)."""
        return "tools" in self.source and "<tool_call>" in self.source

    @cached_property
    def reasoning(self) -> ReasoningFormat | None:
        """How the model marks its reasoning (`<think>…</think>`), from this template; None for
        a model that does not reason. Worked out on first use (it renders the template)."""
        return detect_reasoning(self)

    def render(
        self,
        messages: list[dict[str, Any]],
        *,
        add_generation_prompt: bool = True,
        tools: list[dict[str, Any]] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> str:
        """Render the conversation. `extra` holds further template variables (a request's
        `chat_template_kwargs`, say `enable_thinking`); it may not set RENDER_VARIABLES."""
        clashing = sorted(RENDER_VARIABLES.intersection(extra or {}))
        if clashing:
            raise InvalidRequestError(
                f"chat_template_kwargs may not set {', '.join(clashing)}: Hearth sets them",
                param="chat_template_kwargs",
            )
        try:
            text = self._template.render(
                **(extra or {}),
                messages=messages,
                add_generation_prompt=add_generation_prompt,
                bos_token=self.bos_token,
                eos_token=self.eos_token,
                tools=tools,
            )
        except TemplateError as exc:
            # Templates raise to reject a conversation shape (say, roles not alternating).
            raise InvalidRequestError(
                f"The model's chat template rejected the messages: {exc}", param="messages"
            ) from exc
        return text
