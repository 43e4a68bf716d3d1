"""Embedding inputs, checked and tokenized for the embedder, vectors back: what OpenAI's
/v1/embeddings and Ollama's /api/embed and /api/embeddings share (Ollama's with truncation on).

`dimensions`, the input's form, emptiness, vocabulary and length limits (400) and tokenizing
happen here; the embedder sees only lists of token ids.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING

from hearth.errors import ContextLengthExceededError, InvalidRequestError, UnsupportedParameterError
from hearth.protocol.embeddings import EmbeddingRequest
from hearth.server.core.prepare import check_token_ids
from hearth.server.core.turns import Client, until_disconnect
from hearth.server.state import LoadedModel, ServerState

if TYPE_CHECKING:
    from hearth.engine.embedder import Embedder
    from hearth.engine.runner_process import RemoteEmbedder

__all__ = [
    "MAX_INPUTS",
    "MAX_TOTAL_TOKENS",
    "Embedded",
    "embed_inputs",
    "embedder_for",
    "input_tokens",
    "max_input_tokens",
]

logger = logging.getLogger(__name__)

MAX_INPUTS = 2048  # OpenAI: "any array must be 2048 dimensions or less"
MAX_TOTAL_TOKENS = 300_000  # OpenAI: the most tokens summed across a request's inputs


def embedder_for(model: LoadedModel, max_requests: int) -> Embedder | RemoteEmbedder:
    """The model's embedder, created by the first request that needs one (a context costs
    memory); `LoadedModel.close_embedder` frees it with the model. It holds at most
    `max_requests` requests, running or waiting, as the generation engine does."""
    if model.embedder is None:
        from hearth.engine.embedder import Embedder
        from hearth.engine.llama_runner import LlamaRunner
        from hearth.engine.runner_process import ProcessEngine, RemoteEmbedder

        engine, runner = model.engine, model.runner
        embedder: Embedder | RemoteEmbedder
        if isinstance(engine, ProcessEngine):
            embedder = RemoteEmbedder(engine, max_requests)  # its context is the runner's
            engine.embedder = embedder
        else:
            assert isinstance(runner, LlamaRunner)
            embedder = Embedder(runner, max_requests)
        embedder.start()  # the llama context is created on the embedder's own thread
        model.embedder = embedder
    return model.embedder


def _check_dimensions(dimensions: int | None, n_embd: int, model_id: str) -> None:
    # A GGUF does not say whether its model was trained to be truncated (Matryoshka), and a
    # causal LM's pooled state is not: a shortened vector would lose meaning silently.
    if dimensions is not None and dimensions != n_embd:
        raise UnsupportedParameterError(
            f"'dimensions' must be {n_embd} for `{model_id}`, or left out: its "
            f"{n_embd}-dimensional vectors were not trained to be shortened (Matryoshka), so "
            "cutting them would silently lose meaning.",
            param="dimensions",
        )


def _input_items(raw: str | list[str] | list[int] | list[list[int]]) -> list[str | list[int]]:
    if isinstance(raw, str):
        return [raw]
    if not raw:
        raise InvalidRequestError(
            "'input' must not be an empty array.", param="input", code="empty_array"
        )
    if isinstance(raw[0], int):
        return [raw]  # one input given as token ids
    items: list[str | list[int]] = list(raw)
    if len(items) > MAX_INPUTS:
        raise InvalidRequestError(
            f"'input' takes at most {MAX_INPUTS} items, got {len(items)}.", param="input"
        )
    return items


def _truncated(model: LoadedModel, text: str, tokens: list[int], max_tokens: int) -> list[int]:
    """The first `max_tokens` of an input's tokens, keeping the special tokens the vocabulary
    puts at its end (an embedding model's EOS or SEP), as Ollama's truncation does."""
    plain = model.runner.tokenize(text, add_special=False, parse_special=True)
    added = len(tokens) - len(plain)
    tail = 0
    while plain and tail < added and tokens[-1 - tail] != plain[-1]:
        tail += 1
    if tail == 0 or tail >= max_tokens:
        return tokens[:max_tokens]
    return tokens[: max_tokens - tail] + tokens[-tail:]


def input_tokens(
    model: LoadedModel, req: EmbeddingRequest, max_tokens: int, *, truncate: bool = False
) -> list[list[int]]:
    """Each input as token ids, checked: never empty, in the vocabulary, within `max_tokens`.
    With `truncate`, a longer input is cut to `max_tokens` (and the cut logged) instead of
    refused."""
    items = _input_items(req.input)
    inputs: list[list[int]] = []
    total = 0
    cut_inputs = cut_tokens = 0
    for i, item in enumerate(items):
        where = "'input'" if len(items) == 1 else f"'input[{i}]'"
        tokens: list[int]
        if isinstance(item, str):
            if not item:
                raise InvalidRequestError(f"{where} must not be an empty string.", param="input")
            tokens = model.runner.tokenize(item, add_special=True, parse_special=True)
        else:
            tokens = list(item)
            check_token_ids(model, tokens, param="input")
        if not tokens:
            raise InvalidRequestError(f"{where} must not be empty.", param="input")
        if len(tokens) > max_tokens and truncate:
            cut_inputs += 1
            cut_tokens += len(tokens) - max_tokens
            tokens = (
                _truncated(model, item, tokens, max_tokens)
                if isinstance(item, str)
                else tokens[:max_tokens]
            )
        if len(tokens) > max_tokens:
            raise ContextLengthExceededError(
                f"This model's maximum input length is {max_tokens} tokens, however {where} has "
                f"{len(tokens)} tokens. Please reduce its length.",
                param="input",
            )
        total += len(tokens)
        inputs.append(tokens)
    if cut_inputs:
        logger.info(
            "Truncated %d of %d embedding inputs to %d tokens: %d tokens cut",
            cut_inputs,
            len(items),
            max_tokens,
            cut_tokens,
        )
    if total > MAX_TOTAL_TOKENS:
        raise InvalidRequestError(
            f"The inputs hold {total} tokens in all; at most {MAX_TOTAL_TOKENS} are allowed in "
            "one request.",
            param="input",
        )
    return inputs


@dataclass(frozen=True, slots=True)
class Embedded:
    vectors: list[list[float]]  # unit length, one per input, in order
    n_tokens: int  # every token embedded


def max_input_tokens(state: ServerState, model: LoadedModel) -> int:
    """The longest input the model's embedder takes: min(--ctx-size, training context)."""
    return _embedder(state, model).max_input_tokens


def _embedder(state: ServerState, model: LoadedModel) -> Embedder | RemoteEmbedder:
    settings = state.settings
    return embedder_for(model, settings.parallel + settings.max_queue)


async def embed_inputs(
    state: ServerState,
    model: LoadedModel,
    req: EmbeddingRequest,
    http_request: Client,
    *,
    max_tokens: int | None = None,
    truncate: bool = False,
) -> Embedded:
    """Check, tokenize and embed the request's inputs with its (leased) model. `max_tokens`
    lowers the length limit below the embedder's; `truncate` cuts longer inputs to it."""
    embedder = _embedder(state, model)
    _check_dimensions(req.dimensions, embedder.n_embd, model.model_id)
    limit = embedder.max_input_tokens if max_tokens is None else max_tokens
    inputs = await asyncio.to_thread(input_tokens, model, req, limit, truncate=truncate)
    request_id = f"embd-{uuid.uuid4().hex}"
    vectors = await until_disconnect(http_request, embedder.embed(request_id, inputs))
    return Embedded(vectors, sum(len(tokens) for tokens in inputs))
