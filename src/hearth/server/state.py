"""Everything a request needs, built once by the lifespan and kept on `app.state.hearth`."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from hearth.models.chat_template import ChatTemplate
from hearth.settings import ServeSettings

if TYPE_CHECKING:
    from hearth.engine.devices import Device
    from hearth.engine.engine import Engine
    from hearth.engine.llama_runner import LlamaRunner, ModelInfo

__all__ = ["ServerState"]


@dataclass(slots=True)
class ServerState:
    settings: ServeSettings
    model_id: str
    runner: LlamaRunner
    engine: Engine
    chat_template: ChatTemplate
    devices: list[Device]
    created: int = field(default_factory=lambda: int(time.time()))

    @property
    def model_info(self) -> ModelInfo:
        return self.runner.info

    @property
    def n_ctx_per_slot(self) -> int:
        return self.runner.n_ctx_per_slot
