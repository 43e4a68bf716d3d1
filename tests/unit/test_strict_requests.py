"""Request bodies are validated as their JSON Schema reads (protocol/base.py): no string is a
number and no number a boolean, but 16.0 is the integer 16, as JSON Schema has it."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from hearth.protocol import ollama
from hearth.protocol.embeddings import EmbeddingRequest
from hearth.protocol.extensions import DetokenizeRequest
from hearth.protocol.openai import ChatCompletionRequest, CompletionRequest

CHAT: dict[str, Any] = {"model": "m", "messages": [{"role": "user", "content": "Hi"}]}


@pytest.mark.parametrize(
    "fields",
    [
        {"max_tokens": "16"},
        {"stream": "true"},
        {"stream": 0},
        {"logprobs": 1.0},
        {"temperature": "0.5"},
        {"seed": 1.5},
        {"stop": [1.0]},
        {"messages": [{"role": "user", "content": 5}]},
    ],
)
def test_lax_coercions_are_refused(fields: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        ChatCompletionRequest.model_validate({**CHAT, **fields})


def test_whole_floats_are_integers_as_in_json_schema() -> None:
    request = ChatCompletionRequest.model_validate(
        {**CHAT, "max_tokens": 16.0, "n": 2.0, "temperature": 1, "top_k": 40.0}
    )
    assert (request.max_tokens, request.n, request.top_k) == (16, 2, 40)
    assert all(type(v) is int for v in (request.max_tokens, request.n, request.top_k))
    assert request.temperature == 1.0
    prompt = CompletionRequest.model_validate({"model": "m", "prompt": [[1.0, 2.0], [3.0]]})
    assert prompt.prompt == [[1, 2], [3]]
    assert DetokenizeRequest.model_validate({"tokens": [5.0]}).tokens == [5]
    assert EmbeddingRequest.model_validate({"model": "m", "input": [7.0]}).input == [7]
    options = ollama.Options.model_validate({"num_predict": 8.0, "seed": 3.0})
    assert (options.num_predict, options.seed) == (8, 3)


def test_free_form_json_is_kept_as_sent() -> None:
    schema = {"type": "number", "minimum": 1.0, "default": 2.0}
    tool = {"type": "function", "function": {"name": "f", "parameters": schema}}
    request = ChatCompletionRequest.model_validate({**CHAT, "tools": [tool]})
    assert request.tools is not None
    kept = request.tools[0]["function"]["parameters"]
    assert kept == schema and type(kept["minimum"]) is float
