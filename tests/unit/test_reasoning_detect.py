"""Reading a reasoning model's format from its chat template (hearth.models.reasoning)."""

from __future__ import annotations

import pytest

from hearth.errors import InvalidRequestError
from hearth.models.chat_template import GEMMA_TEMPLATE, ChatTemplate
from hearth.models.reasoning import ReasoningFormat, detect_reasoning, template_variables
from tests.reasoning_model import REASONING_TEMPLATE
from tests.unit.test_chat_template import SMOLLM2_TEMPLATE

# Qwen3's template (Qwen/Qwen3-8B), whitespace control as shipped: tools in the system prompt,
# reasoning kept only after the last user query, and an empty block when enable_thinking is
# false. With thinking on it opens nothing: the model writes `<think>` itself.
QWEN3_TEMPLATE = """{%- if tools %}
    {{- '<|im_start|>system\\n' }}
    {%- if messages[0].role == 'system' %}
        {{- messages[0].content + '\\n\\n' }}
    {%- endif %}
    {{- "# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\n\
You are provided with function signatures within <tools></tools> XML tags:\\n<tools>" }}
    {%- for tool in tools %}
        {{- "\\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\\n</tools>\\n\\nFor each function call, return a json object with function name and \
arguments within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\"name\\": <function-name>, \
\\"arguments\\": <args-json-object>}\\n</tool_call><|im_end|>\\n" }}
{%- else %}
    {%- if messages[0].role == 'system' %}
        {{- '<|im_start|>system\\n' + messages[0].content + '<|im_end|>\\n' }}
    {%- endif %}
{%- endif %}
{%- set ns = namespace(multi_step_tool=true, last_query_index=messages|length - 1) %}
{%- for message in messages[::-1] %}
    {%- set index = (messages|length - 1) - loop.index0 %}
    {%- if ns.multi_step_tool and message.role == "user" and message.content is string and \
not(message.content.startswith('<tool_response>') and \
message.content.endswith('</tool_response>')) %}
        {%- set ns.multi_step_tool = false %}
        {%- set ns.last_query_index = index %}
    {%- endif %}
{%- endfor %}
{%- for message in messages %}
    {%- if message.content is string %}
        {%- set content = message.content %}
    {%- else %}
        {%- set content = '' %}
    {%- endif %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) %}
        {{- '<|im_start|>' + message.role + '\\n' + content + '<|im_end|>' + '\\n' }}
    {%- elif message.role == "assistant" %}
        {%- set reasoning_content = '' %}
        {%- if message.reasoning_content is string %}
            {%- set reasoning_content = message.reasoning_content %}
        {%- else %}
            {%- if '</think>' in content %}
                {%- set reasoning_content = content.split('</think>')[0].rstrip('\\n')\
.split('<think>')[-1].lstrip('\\n') %}
                {%- set content = content.split('</think>')[-1].lstrip('\\n') %}
            {%- endif %}
        {%- endif %}
        {%- if loop.index0 > ns.last_query_index %}
            {%- if loop.last or (not loop.last and reasoning_content) %}
                {{- '<|im_start|>' + message.role + '\\n<think>\\n' + \
reasoning_content.strip('\\n') + '\\n</think>\\n\\n' + content.lstrip('\\n') }}
            {%- else %}
                {{- '<|im_start|>' + message.role + '\\n' + content }}
            {%- endif %}
        {%- else %}
            {{- '<|im_start|>' + message.role + '\\n' + content }}
        {%- endif %}
        {%- if message.tool_calls %}
            {%- for tool_call in message.tool_calls %}
                {%- if (loop.first and content) or (not loop.first) %}
                    {{- '\\n' }}
                {%- endif %}
                {%- if tool_call.function %}
                    {%- set tool_call = tool_call.function %}
                {%- endif %}
                {{- '<tool_call>\\n{"name": "' }}
                {{- tool_call.name }}
                {{- '", "arguments": ' }}
                {%- if tool_call.arguments is string %}
                    {{- tool_call.arguments }}
                {%- else %}
                    {{- tool_call.arguments | tojson }}
                {%- endif %}
                {{- '}\\n</tool_call>' }}
            {%- endfor %}
        {%- endif %}
        {{- '<|im_end|>\\n' }}
    {%- elif message.role == "tool" %}
        {%- if loop.first or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\\n<tool_response>\\n' }}
        {{- content }}
        {{- '\\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
    {%- if enable_thinking is defined and enable_thinking is false %}
        {{- '<think>\\n\\n</think>\\n\\n' }}
    {%- endif %}
{%- endif %}"""

# DeepSeek-R1-Distill-Qwen's template after DeepSeek's 2025 update: the generation prompt opens
# the block, and earlier answers lose theirs.
DEEPSEEK_R1_DISTILL_TEMPLATE = (
    "{% if not add_generation_prompt is defined %}{% set add_generation_prompt = false %}"
    "{% endif %}{% set ns = namespace(is_first=false, is_tool=false, is_output_first=true, "
    "system_prompt='') %}{%- for message in messages %}{%- if message['role'] == 'system' %}"
    "{% set ns.system_prompt = message['content'] %}{%- endif %}{%- endfor %}{{bos_token}}"
    "{{ns.system_prompt}}{%- for message in messages %}{%- if message['role'] == 'user' %}"
    "{%- set ns.is_tool = false -%}{{'<｜User｜>' + message['content']}}{%- endif %}"
    "{%- if message['role'] == 'assistant' and message['content'] is not none %}"
    "{%- set ns.is_tool = false -%}{% set content = message['content'] %}"
    "{% if '</think>' in content %}{% set content = content.split('</think>')[-1] %}{% endif %}"
    "{{'<｜Assistant｜>' + content + '<｜end▁of▁sentence｜>'}}{%- endif %}{%- endfor -%}"
    "{% if add_generation_prompt and not ns.is_tool %}{{'<｜Assistant｜><think>\\n'}}{% endif %}"
)
# The same template as first released: it only strips `</think>` from earlier answers.
DEEPSEEK_R1_DISTILL_ORIGINAL = DEEPSEEK_R1_DISTILL_TEMPLATE.replace(
    "{{'<｜Assistant｜><think>\\n'}}", "{{'<｜Assistant｜>'}}"
)
# DeepSeek-V3.1's switch is `thinking`, off unless set; off, it closes a block it never opened.
DEEPSEEK_V31_LIKE = (
    "{{ bos_token }}{% for message in messages %}{% if message['role'] == 'user' %}"
    "{{ '<｜User｜>' + message['content'] }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<｜Assistant｜>' }}"
    "{% if thinking is defined and thinking %}{{ '<think>' }}{% else %}{{ '</think>' }}{% endif %}"
    "{% endif %}"
)
GPT_OSS_LIKE = (
    "{% for message in messages %}{{ '<|start|>' + message['role'] + '<|message|>' + "
    "message['content'] + '<|end|>' }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|start|>assistant<|channel|>analysis<|message|>' }}{% endif %}"
)


def _format(source: str) -> ReasoningFormat | None:
    return detect_reasoning(ChatTemplate(source, bos_token="<s>", eos_token="</s>"))


def test_qwen3_opens_nothing_and_closes_an_empty_block_when_off() -> None:
    assert _format(QWEN3_TEMPLATE) == ReasoningFormat(
        open_tag="<think>",
        close_tag="</think>",
        opens_in_prompt=False,
        switch="enable_thinking",
        closes_in_prompt_when_off=True,
    )
    template = ChatTemplate(QWEN3_TEMPLATE)
    messages = [{"role": "user", "content": "Hi"}]
    assert template.render(messages).endswith("<|im_start|>assistant\n")
    off = template.render(messages, extra={"enable_thinking": False})
    assert off.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")


def test_a_deepseek_r1_distill_opens_the_block_in_the_prompt() -> None:
    assert _format(DEEPSEEK_R1_DISTILL_TEMPLATE) == ReasoningFormat(
        open_tag="<think>",
        close_tag="</think>",
        opens_in_prompt=True,
        switch=None,
        closes_in_prompt_when_off=False,
    )


def test_a_template_that_only_strips_the_block_from_history_still_reasons() -> None:
    # The model writes `<think>` itself; the template never opens one.
    assert _format(DEEPSEEK_R1_DISTILL_ORIGINAL) == ReasoningFormat(
        open_tag="<think>",
        close_tag="</think>",
        opens_in_prompt=False,
        switch=None,
        closes_in_prompt_when_off=False,
    )


def test_the_test_models_template_opens_the_block_unless_switched_off() -> None:
    assert _format(REASONING_TEMPLATE) == ReasoningFormat(
        open_tag="<think>",
        close_tag="</think>",
        opens_in_prompt=True,
        switch="enable_thinking",
        closes_in_prompt_when_off=True,
    )
    template = ChatTemplate(REASONING_TEMPLATE)
    history = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "<think>\nA greeting.\n</think>\n\nHello."},
        {"role": "user", "content": "2 + 2?"},
    ]
    assert template.render(history) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\nHello.<|im_end|>\n<|im_start|>user\n2 + 2?<|im_end|>\n"
        "<|im_start|>assistant\n<think>\n"
    )
    off = template.render(history[-1:], extra={"enable_thinking": False})
    assert off.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")


def test_a_switch_off_by_default_is_read_switched_on() -> None:
    assert _format(DEEPSEEK_V31_LIKE) == ReasoningFormat(
        open_tag="<think>",
        close_tag="</think>",
        opens_in_prompt=True,
        switch="thinking",
        closes_in_prompt_when_off=True,
    )


@pytest.mark.parametrize(
    ("open_tag", "close_tag"),
    [
        ("<thinking>", "</thinking>"),
        ("<|begin_of_thought|>", "<|end_of_thought|>"),
        ("◁think▷", "◁/think▷"),
    ],
)
def test_other_known_tags(open_tag: str, close_tag: str) -> None:
    source = (
        "{% for message in messages %}{{ message['content'].split('" + close_tag + "')[-1] }}"
        "{% endfor %}{% if add_generation_prompt %}{{ 'A: " + open_tag + "' }}{% endif %}"
    )
    detected = _format(source)
    assert detected is not None
    assert (detected.open_tag, detected.close_tag, detected.opens_in_prompt) == (
        open_tag,
        close_tag,
        True,
    )


@pytest.mark.parametrize(
    "source",
    [SMOLLM2_TEMPLATE, GEMMA_TEMPLATE, GPT_OSS_LIKE],
    ids=["smollm2-chatml", "gemma", "gpt-oss-channels"],
)
def test_templates_without_a_tagged_block_do_not_reason(source: str) -> None:
    assert _format(source) is None


def test_a_template_that_refuses_the_probe_opens_nothing() -> None:
    source = (
        "{% if messages[0]['role'] != 'system' %}{{ raise_exception('system first') }}{% endif %}"
        "{% if add_generation_prompt %}{{ '<think>\\n' }}{% endif %}"
    )
    detected = _format(source)
    assert detected is not None and not detected.opens_in_prompt


def test_template_variables_are_what_it_reads_less_globals() -> None:
    variables = template_variables(ChatTemplate(QWEN3_TEMPLATE))
    standard = {"messages", "tools", "add_generation_prompt"}
    # Jinja counts a name set only on some branches (`content`) as read from the context too.
    assert variables == standard | {"enable_thinking", "content", "reasoning_content"}
    source = "{{ raise_exception(strftime_now('%Y')) }}{% for i in range(n) %}{{ bos_token }}"
    source += "{% set x = 1 %}{{ x }}{% endfor %}"
    assert template_variables(ChatTemplate(source)) == {"n", "bos_token"}


def test_render_passes_extra_variables_but_not_its_own() -> None:
    template = ChatTemplate("{{ greeting }}, {{ messages[0]['content'] }}")
    assert template.render([{"role": "user", "content": "Hi"}], extra={"greeting": "Yo"}) == (
        "Yo, Hi"
    )
    with pytest.raises(InvalidRequestError) as caught:
        template.render([], extra={"messages": [], "bos_token": "x"})
    assert caught.value.param == "chat_template_kwargs"
    assert "bos_token, messages" in caught.value.message


def test_the_format_is_worked_out_once_per_template() -> None:
    template = ChatTemplate(REASONING_TEMPLATE)
    assert template.reasoning is template.reasoning
    assert template.reasoning is not None and template.reasoning.opens_in_prompt
    assert ChatTemplate(None).reasoning is None
