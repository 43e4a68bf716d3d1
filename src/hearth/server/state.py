"""Everything a request needs, built once by the lifespan and kept on `app.state.hearth`."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from hearth.errors import ModelNotFoundError
from hearth.models.chat_template import ChatTemplate
from hearth.settings import ServeSettings

if TYPE_CHECKING:
    from hearth.engine.devices import Device
    from hearth.engine.embedder import Embedder
    from hearth.engine.engine import Engine
    from hearth.engine.llama_runner import LlamaRunner, ModelInfo

__all__ = ["LoadedModel", "ServerState"]


@dataclass(slots=True)
class LoadedModel:
    """One model in memory: its llama context, the engine thread that owns it, its template."""

    model_id: str
    runner: LlamaRunner
    engine: Engine
    chat_template: ChatTemplate
    created: int = field(default_factory=lambda: int(time.time()))
    # Its own llama context, created by the first /v1/embeddings request (hearth.server.embeddings).
    embedder: Embedder | None = None

    @property
    def model_info(self) -> ModelInfo:
        return self.runner.info

    @property
    def n_ctx_per_slot(self) -> int:
        return self.runner.n_ctx_per_slot

    def close_embedder(self) -> None:
        """Free the embedding context; before the runner closes, whose model it borrows."""
        if self.embedder is not None:
            self.embedder.close()
            self.embedder = None


@dataclass(slots=True)
class ServerState:
    settings: ServeSettings
    model: LoadedModel
    devices: list[Device]

    @property
    def model_id(self) -> str:
        return self.model.model_id

    def model_for(self, name: str) -> LoadedModel:
        """The loaded model a request names, or a 404."""
        if name != self.model.model_id:
            raise ModelNotFoundError(
                f"The model `{name}` does not exist. This server serves `{self.model.model_id}`.",
                param="model",
            )
        return self.model
