from __future__ import annotations

import pytest

from hearth.errors import InvalidRequestError
from hearth.models.chat_template import FALLBACK_TEMPLATE, ChatTemplate
from hearth.models.registry import embedded_model_path

SMOLLM2_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
    "Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + "
    "message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def test_renders_the_models_template_with_generation_prompt() -> None:
    template = ChatTemplate(SMOLLM2_TEMPLATE, bos_token="<|im_start|>", eos_token="<|im_end|>")
    text = template.render([{"role": "user", "content": "Hi"}])
    assert text == (
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
        "Face<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    )


def test_template_in_the_embedded_gguf_is_the_one_we_expect() -> None:
    from gguf import GGUFReader

    reader = GGUFReader(embedded_model_path())
    field = reader.get_field("tokenizer.chat_template")
    assert field is not None
    assert field.contents() == SMOLLM2_TEMPLATE


def test_fallback_is_chatml() -> None:
    template = ChatTemplate(None)
    assert template.is_fallback and template.source == FALLBACK_TEMPLATE
    text = template.render(
        [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}],
        add_generation_prompt=True,
    )
    assert text == "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nU<|im_end|>\n" + (
        "<|im_start|>assistant\n"
    )


def test_raise_exception_becomes_a_400() -> None:
    template = ChatTemplate(
        "{% if messages[0]['role'] != 'user' %}{{ raise_exception('first must be user') }}"
        "{% endif %}{{ messages[0]['content'] }}"
    )
    with pytest.raises(InvalidRequestError) as caught:
        template.render([{"role": "assistant", "content": "x"}])
    assert "first must be user" in caught.value.message
    assert caught.value.param == "messages"


def test_the_sandbox_blocks_attribute_escapes() -> None:
    template = ChatTemplate("{{ messages.__class__.__mro__ }}")
    with pytest.raises(InvalidRequestError, match="unsafe"):
        template.render([])


def test_tojson_and_bos_are_available() -> None:
    template = ChatTemplate("{{ bos_token }}{{ messages[0] | tojson }}", bos_token="<s>")
    assert template.render([{"role": "user", "content": "é"}]) == (
        '<s>{"role": "user", "content": "é"}'
    )


def test_gemma_without_a_template_gets_gemma_turns() -> None:
    from hearth.models.chat_template import ChatTemplate

    template = ChatTemplate(None, bos_token="<bos>", architecture="gemma3")
    text = template.render(
        [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello."},
            {"role": "user", "content": "Bye"},
        ]
    )
    assert text == (
        "<bos><start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n"
        "<start_of_turn>model\nHello.<end_of_turn>\n"
        "<start_of_turn>user\nBye<end_of_turn>\n<start_of_turn>model\n"
    )
    assert ChatTemplate(None, architecture="llama").source.startswith("{% for message")
