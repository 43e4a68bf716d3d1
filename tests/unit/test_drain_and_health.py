"""In process: the drain's gate (503 with Retry-After in each API's shape, /health still
answering) and a model whose engine failed, reported as failed by /health."""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass

import httpx
import pytest

from hearth.engine.engine import Engine
from hearth.engine.types import BatchBudget, GenerationRequest, QueuePolicy, SamplingParams
from hearth.errors import EngineError, HearthError, ServerShuttingDownError
from hearth.models.manager import ManagerLimits, ModelManager
from hearth.server.app import create_app
from hearth.server.catalog import ServerCatalog
from hearth.server.http.drain import Drain
from hearth.server.state import LoadedModel, ServerState
from hearth.settings import ServeSettings
from tests.unit.fake_runner import FakeRunner, text_tokens

MODEL = "smollm2:135m"


@dataclass
class BrokenRunner(FakeRunner):
    def sample(self, sampler: object, batch_row: int) -> int:
        raise RuntimeError("boom")

    def close(self) -> None:
        pass


def _state(settings: ServeSettings) -> ServerState:
    def never(_: object) -> LoadedModel:
        raise AssertionError("nothing loads here")

    catalog = ServerCatalog(settings, {}, never)
    manager: ModelManager[LoadedModel] = ModelManager(catalog, ManagerLimits())
    runner = BrokenRunner()
    engine = Engine(runner, 2, BatchBudget(64, 16), QueuePolicy(max_waiting=4, timeout_s=60))
    model = LoadedModel(MODEL, runner, engine, chat_template=None)  # type: ignore[arg-type]
    manager.adopt(MODEL, model, math.inf)
    return ServerState(settings=settings, catalog=catalog, models=manager, devices=[])


def test_health_reports_a_model_whose_engine_failed_and_the_drain() -> None:
    async def scenario() -> None:
        settings = ServeSettings()
        state = _state(settings)
        app = create_app(settings, state)
        app.state.hearth = state
        state.models.start()
        transport = httpx.ASGITransport(app=app)
        try:
            async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as http:
                health = (await http.get("/health")).json()
                assert health["status"] == "ok" and health["models"][0]["state"] == "loaded"

                engine = state.models.get(MODEL)
                assert engine is not None
                request = GenerationRequest("r", tuple(text_tokens("Hi")), SamplingParams(8))
                with pytest.raises(EngineError, match="RuntimeError: boom"):
                    async with asyncio.timeout(10):
                        async for _ in engine.engine.generate(request):
                            pass
                health = (await http.get("/health")).json()
                [entry] = health["models"]
                assert entry["state"] == "failed"
                assert entry["error"] == "RuntimeError: boom"

                state.drain.draining = True
                health_response = await http.get("/health")
                assert health_response.status_code == 200
                assert health_response.json()["status"] == "draining"
                chat = await http.post("/v1/chat/completions", json={})
                assert chat.status_code == 503
                assert chat.headers["Retry-After"] == "5"
                assert chat.json()["error"]["code"] == "server_draining"
                messages = await http.post("/v1/messages", json={})
                assert messages.status_code == 503
                assert messages.json()["type"] == "error"
                tags = await http.get("/api/tags")
                assert tags.status_code == 503 and set(tags.json()) == {"error"}
                models = await http.get("/v1/models", headers={"anthropic-version": "2023-06-01"})
                assert models.json()["type"] == "error"
        finally:
            await state.models.close()

    asyncio.run(scenario())


def test_a_drain_waits_for_running_requests_then_ends_those_left() -> None:
    async def scenario() -> None:
        drain = Drain()
        ended: list[HearthError] = []
        drain.opened()
        drain.opened()

        def end_requests(error: HearthError) -> None:
            ended.append(error)
            drain.closed()  # the engine ends the request left, which then closes

        running = asyncio.create_task(drain.run(60, end_requests))
        await asyncio.sleep(0.05)
        assert drain.draining and not running.done()
        drain.closed()  # one finishes by itself
        await asyncio.sleep(0.05)
        assert not running.done() and not ended
        drain.hurry()  # the second signal
        await asyncio.wait_for(running, 5)
        assert len(ended) == 1 and isinstance(ended[0], ServerShuttingDownError)
        assert drain.running == 0

    asyncio.run(scenario())


def test_a_drain_with_nothing_running_ends_at_once() -> None:
    async def scenario() -> None:
        drain = Drain()
        await asyncio.wait_for(drain.run(60, lambda error: None), 1)
        assert drain.draining

    asyncio.run(scenario())
