"""OpenAI embeddings: the wire request in, vectors back as floats or base64.
https://platform.openai.com/docs/api-reference/embeddings/create

Checking and tokenizing the inputs is `core/embeddings.py`'s, shared with Ollama's API.
"""

from __future__ import annotations

import base64
import struct
from collections.abc import Sequence

from fastapi import Request, Response

from hearth.protocol.embeddings import Embedding, EmbeddingList, EmbeddingRequest, EmbeddingUsage
from hearth.server.core.embeddings import embed_inputs
from hearth.server.state import LoadedModel, ServerState

__all__ = ["serve_embeddings"]


def _encoded(vector: Sequence[float], encoding_format: str | None) -> list[float] | str:
    # float32 as OpenAI sends it: base64 of the little-endian bytes, or those same values as floats.
    packed = struct.pack(f"<{len(vector)}f", *vector)
    if encoding_format == "base64":
        return base64.b64encode(packed).decode("ascii")
    return list(struct.unpack(f"<{len(vector)}f", packed))


async def serve_embeddings(
    state: ServerState, model: LoadedModel, req: EmbeddingRequest, http_request: Request
) -> Response:
    embedded = await embed_inputs(state, model, req, http_request)
    body = EmbeddingList(
        data=[
            Embedding(embedding=_encoded(vector, req.encoding_format), index=i)
            for i, vector in enumerate(embedded.vectors)
        ],
        model=req.model,
        usage=EmbeddingUsage(prompt_tokens=embedded.n_tokens, total_tokens=embedded.n_tokens),
    )
    return Response(body.model_dump_json(), media_type="application/json")
