"""The app in process over httpx.ASGITransport, on a real Engine whose runner follows a script:
every API's adapter, preparation and renderer run for real, with no model and no subprocess.

    async with fake_app(reply="Ahoy Arr matey") as app:
        answer = await app.http.post("/v1/chat/completions", json={...})

Tokens are UTF-8 bytes, one each (the FakeRunner's); every sequence follows the reply unless
`scripts` holds one for its prompt's first token.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

import httpx

from hearth.engine.engine import Engine
from hearth.engine.llama_runner import ModelInfo
from hearth.engine.scheduler import Chunk
from hearth.engine.types import BatchBudget, QueuePolicy
from hearth.models.chat_template import ChatTemplate
from hearth.models.manager import ManagerLimits, ModelManager
from hearth.models.presets import Preset
from hearth.server.app import create_app
from hearth.server.catalog import ServerCatalog
from hearth.server.state import LoadedModel, ServerState
from hearth.settings import ServeSettings
from tests.unit.fake_runner import EOG, FakeRunner, FakeSampler

MODEL = "smollm2:135m"


@dataclass
class ScriptedRunner(FakeRunner):
    """The FakeRunner as the HTTP layer sees a model: it tokenizes, detokenizes and has slots."""

    reply: list[int] = field(default_factory=list)
    fail_decode_at: int | None = None  # the decode call (1: the first) that fails, as llama's -1
    decodes: int = 0
    n_slots: int = 4
    n_vocab: int = EOG + 1
    info: ModelInfo = field(
        default_factory=lambda: ModelInfo(
            chat_template=None,
            bos_text="",
            eos_text="",
            add_bos=False,
            n_ctx_train=4096,
            n_params=1,
            size_bytes=1,
            description="scripted",
            fim_tokens=None,
        )
    )

    def decode(self, chunks: Sequence[Chunk]) -> int:
        self.decodes += 1
        if self.decodes == self.fail_decode_at:
            return -1
        return super().decode(chunks)

    def sample(self, sampler: object, batch_row: int) -> int:
        assert isinstance(sampler, FakeSampler)
        if sampler.script is None:
            first = self._row_to_first_token[batch_row]
            sampler.script = self.scripts.get(first, self.reply)
        return super().sample(sampler, batch_row)

    def tokenize(
        self, text: str, *, add_special: bool = True, parse_special: bool = False
    ) -> list[int]:
        return list(text.encode())

    def detokenize(self, tokens: Sequence[int]) -> str:
        return bytes(t for t in tokens if t < EOG).decode("utf-8", "replace")

    def check_grammar(self, grammar: object) -> bool:
        return True

    def close(self) -> None:
        pass


def reply_tokens(text: str) -> list[int]:
    """A scripted reply: the text, then the end of generation."""
    return [*text.encode(), EOG]


def _loaded(
    name: str, runner: ScriptedRunner, template: ChatTemplate, preset: Preset | None
) -> LoadedModel:
    engine = Engine(
        runner, runner.n_slots, BatchBudget(512, 128), QueuePolicy(max_waiting=16, timeout_s=60)
    )
    return LoadedModel(name, runner, engine, template, preset=preset)  # type: ignore[arg-type]


@dataclass
class FakeApp:
    http: httpx.AsyncClient
    state: ServerState
    runners: dict[str, ScriptedRunner]


@contextlib.asynccontextmanager
async def fake_app(
    reply: str = "",
    *,
    presets: dict[str, Preset] | None = None,
    template: str | None = None,
    n_ctx: int = 2048,
    settings: ServeSettings | None = None,
) -> AsyncIterator[FakeApp]:
    """The app serving MODEL and each preset's alias (on their own engines), every runner
    replying `reply`."""
    settings = settings or ServeSettings(ctx_size=n_ctx)
    presets = presets or {}

    def never(_: object) -> LoadedModel:
        raise AssertionError("every model is adopted at the start")

    catalog = ServerCatalog(settings, presets, never)
    manager: ModelManager[LoadedModel] = ModelManager(catalog, ManagerLimits(max_loaded=8))
    runners: dict[str, ScriptedRunner] = {}
    for name, preset in [(MODEL, None), *presets.items()]:
        runner = ScriptedRunner(n_ctx_per_slot=n_ctx, reply=reply_tokens(reply))
        runners[name] = runner
        manager.adopt(name, _loaded(name, runner, ChatTemplate(template), preset), math.inf)
    state = ServerState(settings=settings, catalog=catalog, models=manager, devices=[])
    app = create_app(settings, state)
    app.state.hearth = state  # ASGITransport runs no lifespan
    manager.start()
    transport = httpx.ASGITransport(app=app)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as http:
            yield FakeApp(http, state, runners)
    finally:
        await manager.close()
