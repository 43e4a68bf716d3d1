"""Hearth's model-management wire types, not in OpenAI's API: `GET /api/ps` (shaped after
Ollama's, read by `hearth ps`) and `POST /admin/models/load|unload`."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict

from hearth.keep_alive import KeepAlive
from hearth.protocol.base import StrictRequest

__all__ = [
    "LoadModelRequest",
    "RunningModel",
    "RunningModels",
    "UnloadModelRequest",
    "UnloadModelResponse",
]


class LoadModelRequest(StrictRequest):
    model_config = ConfigDict(extra="forbid")

    model: str
    # seconds, or "10m"; 0 unloads once idle, -1 keeps it loaded; default: the model's
    keep_alive: KeepAlive | None = None


class UnloadModelRequest(StrictRequest):
    model_config = ConfigDict(extra="forbid")

    model: str


class UnloadModelResponse(BaseModel):
    model: str
    # unloaded: gone now; not_loaded: it was not loaded; pending: busy, it unloads once its
    # requests end (unless a new request keeps it)
    status: Literal["unloaded", "not_loaded", "pending"]


class RunningModel(BaseModel):
    name: str
    model: str
    size: int  # bytes: weights and KV cache, estimated from the GGUF
    size_vram: int  # the part of `size` offloaded to a GPU
    expires_at: str | None  # ISO 8601; None while it never expires
    slots_in_use: int
    slots_total: int
    context_length: int  # tokens per slot
    runner_pid: int | None = None  # its runner process; None: in the server's own process
    restarts: int = 0  # times its runner was started again after a crash
    last_crash: str | None = None  # why the runner last died ("signal 11 (SIGSEGV)")
    failed: str | None = None  # set after repeated crashes, until the model is loaded again


class RunningModels(BaseModel):
    models: list[RunningModel]
