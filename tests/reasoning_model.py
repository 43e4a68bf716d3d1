"""A reasoning model for tests: the bundled SmolLM2 with a Qwen3-style thinking template.

No reasoning model can be downloaded in tests, so this copies the bundled SmolLM2 GGUF with
gguf's reader and writer (as gguf's own `gguf_new_metadata.py` does), changing only
`tokenizer.chat_template` and `general.name`. The model never learned `<think>`; with this
template its output simply starts inside an open reasoning block, which is what the server's
reasoning handling has to cope with.
"""

from __future__ import annotations

from pathlib import Path

import gguf

from hearth.models.registry import embedded_model_path

__all__ = [
    "OPTIONAL_THINKING_TEMPLATE",
    "REASONING_NAME",
    "REASONING_TEMPLATE",
    "write_reasoning_model",
]

REASONING_NAME = "SmolLM2 reasoning test"

# Modelled on Qwen3's template (system, user, assistant and tool turns in ChatML; earlier
# assistant turns lose their reasoning), with the generation prompt of Qwen3-Thinking-2507 and
# DeepSeek-R1: it opens `<think>` itself unless `enable_thinking` is false, when it closes an
# empty block as Qwen3 does.
REASONING_TEMPLATE = (
    "{%- if messages[0].role == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0].content + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- set ns = namespace(found=false, last_query_index=messages|length - 1) %}"
    "{%- for message in messages[::-1] %}"
    "{%- if not ns.found and message.role == 'user' %}"
    "{%- set ns.found = true %}"
    "{%- set ns.last_query_index = (messages|length - 1) - loop.index0 %}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- for message in messages %}"
    "{%- if message.content is string %}{%- set content = message.content %}"
    "{%- else %}{%- set content = '' %}{%- endif %}"
    "{%- if message.role == 'user' or (message.role == 'system' and not loop.first) %}"
    "{{- '<|im_start|>' + message.role + '\\n' + content + '<|im_end|>\\n' }}"
    "{%- elif message.role == 'assistant' %}"
    "{%- set reasoning_content = '' %}"
    "{%- if message.reasoning_content is string %}"
    "{%- set reasoning_content = message.reasoning_content %}"
    "{%- elif '</think>' in content %}"
    "{%- set reasoning_content = content.split('</think>')[0].rstrip('\\n')"
    ".split('<think>')[-1].lstrip('\\n') %}"
    "{%- set content = content.split('</think>')[-1].lstrip('\\n') %}"
    "{%- endif %}"
    "{%- if loop.index0 > ns.last_query_index and reasoning_content %}"
    "{{- '<|im_start|>assistant\\n<think>\\n' + reasoning_content.strip('\\n')"
    " + '\\n</think>\\n\\n' + content.lstrip('\\n') + '<|im_end|>\\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>assistant\\n' + content + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- elif message.role == 'tool' %}"
    "{%- if loop.first or messages[loop.index0 - 1].role != 'tool' %}"
    "{{- '<|im_start|>user' }}"
    "{%- endif %}"
    "{{- '\\n<tool_response>\\n' + content + '\\n</tool_response>' }}"
    "{%- if loop.last or messages[loop.index0 + 1].role != 'tool' %}"
    "{{- '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}"
    "{{- '<think>\\n\\n</think>\\n\\n' }}"
    "{%- else %}"
    "{{- '<think>\\n' }}"
    "{%- endif %}"
    "{%- endif %}"
)

# DeepSeek-R1-Distill's and early Qwen3's way: the generation prompt does not open the block, so
# the model thinks only if it writes `<think>` itself (SmolLM2 never does).
OPTIONAL_THINKING_TEMPLATE = REASONING_TEMPLATE.replace(
    "{%- else %}{{- '<think>\\n' }}{%- endif %}", "{%- endif %}"
)
assert OPTIONAL_THINKING_TEMPLATE != REASONING_TEMPLATE

# The string values the copy replaces (added if the source lacks them).
_CHANGES = {
    gguf.Keys.Tokenizer.CHAT_TEMPLATE: REASONING_TEMPLATE,
    gguf.Keys.General.NAME: REASONING_NAME,
}


def write_reasoning_model(dst: Path, template: str = REASONING_TEMPLATE) -> Path:
    """Copy the bundled SmolLM2 GGUF to `dst` with `template` and REASONING_NAME; every other
    key-value and every tensor is written as read (types, data, order, alignment)."""
    changes = {**_CHANGES, gguf.Keys.Tokenizer.CHAT_TEMPLATE: template}
    reader = gguf.GGUFReader(embedded_model_path())
    arch_field = reader.get_field(gguf.Keys.General.ARCHITECTURE)
    assert arch_field is not None, "the bundled GGUF names no architecture"
    writer = gguf.GGUFWriter(dst, arch=arch_field.contents(), endianess=reader.endianess)
    # The writer pads tensor data to its own data_alignment (32), whatever general.alignment
    # says: a file with a custom alignment must set it here too, or the copy is misread.
    writer.data_alignment = reader.alignment
    missing = set(changes)
    for field in reader.fields.values():
        # GGUF.* are the reader's view of the header; the writer adds general.architecture.
        if field.name.startswith("GGUF.") or field.name == gguf.Keys.General.ARCHITECTURE:
            continue
        value_type = field.types[0]
        sub_type = field.types[-1] if value_type == gguf.GGUFValueType.ARRAY else None
        value = field.contents()
        if field.name in changes:
            value = changes[field.name]
            missing.discard(field.name)
        writer.add_key_value(field.name, value, value_type, sub_type=sub_type)
    for name in sorted(missing):  # keys the source lacks go last
        writer.add_key_value(name, changes[name], gguf.GGUFValueType.STRING)

    for tensor in reader.tensors:
        writer.add_tensor_info(
            tensor.name,
            tensor.data.shape,
            tensor.data.dtype,
            tensor.data.nbytes,
            raw_dtype=tensor.tensor_type,
        )
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for tensor in reader.tensors:
        writer.write_tensor_data(tensor.data, tensor_endianess=reader.endianess)
    writer.close()
    return dst
