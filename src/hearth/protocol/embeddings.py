"""OpenAI wire types for embeddings, in the order of OpenAI's API reference:
https://platform.openai.com/docs/api-reference/embeddings
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt

from hearth.protocol.base import StrictRequest

__all__ = ["Embedding", "EmbeddingList", "EmbeddingRequest", "EmbeddingUsage"]


class EmbeddingRequest(StrictRequest):
    """https://platform.openai.com/docs/api-reference/embeddings/create"""

    # OpenAI answers an unknown argument with a 400 naming it; so does Hearth.
    model_config = ConfigDict(extra="forbid")

    # Token ids are strict: JSON true or 1.5 is not a token.
    input: str | list[str] | list[StrictInt] | list[list[StrictInt]]
    model: str
    dimensions: int | None = Field(None, ge=1)
    encoding_format: Literal["float", "base64"] | None = None
    user: str | None = None


class Embedding(BaseModel):
    """https://platform.openai.com/docs/api-reference/embeddings/object

    `embedding` is a list of floats, or with `encoding_format: "base64"` the base64 of its
    little-endian float32 bytes.
    """

    embedding: list[float] | str
    index: int
    object: Literal["embedding"] = "embedding"


class EmbeddingUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingList(BaseModel):
    """The response of https://platform.openai.com/docs/api-reference/embeddings/create"""

    data: list[Embedding]
    model: str
    object: Literal["list"] = "list"
    usage: EmbeddingUsage
