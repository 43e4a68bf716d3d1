"""The test reasoning model (tests/reasoning_model.py): a faithful copy of the bundled SmolLM2
GGUF with a thinking template, which the real server loads and chats with."""

from __future__ import annotations

from pathlib import Path

import gguf
import httpx
import numpy as np
import pytest

from hearth.models.chat_template import ChatTemplate
from hearth.models.gguf_info import read_gguf_info
from hearth.models.reasoning import ReasoningFormat, detect_reasoning
from hearth.models.registry import embedded_model_path
from tests.reasoning_model import REASONING_NAME, REASONING_TEMPLATE, write_reasoning_model
from tests.server.conftest import start_server


@pytest.fixture(scope="module")
def reasoning_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_reasoning_model(tmp_path_factory.mktemp("reasoning") / "smollm2-think.gguf")


def test_the_copy_changes_only_the_template_and_the_name(reasoning_model: Path) -> None:
    before, after = read_gguf_info(embedded_model_path()), read_gguf_info(reasoning_model)
    assert after.chat_template == REASONING_TEMPLATE
    assert after.name == REASONING_NAME
    assert (after.architecture, after.parameters, after.quantization) == (
        before.architecture,
        before.parameters,
        before.quantization,
    )
    assert (after.context_length, after.block_count, after.vocab_size) == (
        before.context_length,
        before.block_count,
        before.vocab_size,
    )


def test_every_other_key_and_every_tensor_is_copied_as_read(reasoning_model: Path) -> None:
    source, copy = gguf.GGUFReader(embedded_model_path()), gguf.GGUFReader(reasoning_model)
    assert list(copy.fields) == list(source.fields)
    changed = {gguf.Keys.Tokenizer.CHAT_TEMPLATE, gguf.Keys.General.NAME}
    for name, field in source.fields.items():
        assert copy.fields[name].types == field.types, name
        if name not in changed:
            assert copy.fields[name].contents() == field.contents(), name
    assert copy.alignment == source.alignment
    assert [t.name for t in copy.tensors] == [t.name for t in source.tensors]
    for ours, theirs in zip(copy.tensors, source.tensors, strict=True):
        assert ours.tensor_type == theirs.tensor_type, ours.name
        assert list(ours.shape) == list(theirs.shape), ours.name
        assert ours.data_offset - copy.data_offset == theirs.data_offset - source.data_offset
        assert np.array_equal(ours.data, theirs.data), ours.name


def test_its_template_reads_as_qwen3_thinking() -> None:
    assert detect_reasoning(ChatTemplate(REASONING_TEMPLATE)) == ReasoningFormat(
        open_tag="<think>",
        close_tag="</think>",
        opens_in_prompt=True,
        switch="enable_thinking",
        closes_in_prompt_when_off=True,
    )


@pytest.mark.server
def test_the_server_loads_it_and_answers(reasoning_model: Path, tmp_path: Path) -> None:
    question = "What is 2 + 2?"
    with start_server(tmp_path, "--model", str(reasoning_model)) as server:
        client = server.client()
        model = client.models.list().data[0].id  # the startup model comes first
        assert model == reasoning_model.stem
        reply = client.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": question}],
            max_tokens=8,
            temperature=0,
        )
        # The prompt is the reasoning template's, which ends inside an open <think> block.
        prompt = ChatTemplate(REASONING_TEMPLATE).render([{"role": "user", "content": question}])
        assert prompt.endswith("<|im_start|>assistant\n<think>\n")
        tokenized = httpx.post(f"{server.base_url}/tokenize", json={"content": prompt})
    # It answered: the model generated. Its first tokens are reasoning, so where the text shows
    # (content, or the reasoning beside it) is the server's reasoning handling, tested elsewhere.
    assert reply.choices[0].finish_reason in ("stop", "length")
    assert reply.usage is not None
    assert reply.usage.prompt_tokens == len(tokenized.json()["tokens"])
    assert reply.usage.completion_tokens > 0
