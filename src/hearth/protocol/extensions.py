"""Hearth's own endpoints, not in OpenAI's API. Shaped after llama-server's
/tokenize and /detokenize: https://github.com/ggml-org/llama.cpp/tree/master/tools/server
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from hearth.protocol.base import StrictRequest

__all__ = ["DetokenizeRequest", "DetokenizeResponse", "TokenizeRequest", "TokenizeResponse"]


class TokenizeRequest(StrictRequest):
    model_config = ConfigDict(extra="forbid")

    content: str
    add_special: bool = False
    model: str | None = None  # whose vocabulary; default: the startup model (--model)


class TokenizeResponse(BaseModel):
    tokens: list[int]


class DetokenizeRequest(StrictRequest):
    model_config = ConfigDict(extra="forbid")

    tokens: list[int]
    model: str | None = None  # whose vocabulary; default: the startup model (--model)


class DetokenizeResponse(BaseModel):
    content: str
