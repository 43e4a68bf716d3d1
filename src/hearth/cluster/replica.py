"""A Hearth replica: Hearth's own app and engine (`create_app` over `load_state`, as `hearth
serve` builds them), run in a Ray Serve replica. Requests reach it as ASGI calls over Ray
(hearth.cluster.bridge), so every API, its errors and its auth behave as on one server."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Any

import ray
from ray import serve

from hearth.cluster.bridge import RequestHead, ResponseHead, run_asgi
from hearth.settings import ServeSettings

__all__ = ["HearthReplica", "ReplicaAnswer", "ReplicaInfo"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ReplicaInfo:
    """Where a replica runs: its Serve id (the router's name for it) and its Ray node."""

    replica: str
    node_id: str
    node_ip: str


@dataclass(frozen=True, slots=True)
class ReplicaAnswer:
    """A whole answer, for the ingress's cluster-wide views (/health, /api/ps)."""

    info: ReplicaInfo
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes


class HearthReplica:
    """The class Ray Serve deploys (hearth.cluster.app wraps it with its options)."""

    # Ray Serve awaits an async __init__ (the model loads off the replica's event loop).
    async def __init__(self, serve_flags: dict[str, Any]) -> None:  # type: ignore[misc]
        from hearth.server.app import create_app, load_state

        settings = ServeSettings(**serve_flags)
        logging.basicConfig(
            level=settings.log_level.upper(),
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
            stream=sys.stderr,
        )
        # Blocking (the model loads, or is pulled on this node first): off the replica's loop.
        self._state = await asyncio.to_thread(load_state, settings)
        self._app = create_app(settings, self._state)
        self._lifespan = self._app.router.lifespan_context(self._app)
        await self._lifespan.__aenter__()
        self.info = ReplicaInfo(
            replica=serve.get_replica_context().replica_id.unique_id,
            node_id=ray.get_runtime_context().get_node_id(),
            node_ip=ray.util.get_node_ip_address(),
        )
        logger.info(
            "Hearth replica %s ready on node %s (%s) · model %s · %d slots · %d threads",
            self.info.replica,
            self.info.node_ip,
            self.info.node_id[:12],
            self._state.model_id,
            settings.parallel,
            settings.threads,
        )

    async def forward(
        self, head: RequestHead, body: bytes
    ) -> AsyncGenerator[ResponseHead | bytes, None]:
        """One request through Hearth's app, streamed: the ResponseHead, then body chunks."""
        # Closed explicitly: Ray stops this generator by throwing CancelledError in at its
        # `yield`, which leaves an inner generator suspended (its request running) until GC.
        async with contextlib.aclosing(run_asgi(self._app, head, body)) as parts:
            async for part in parts:
                yield part

    async def answer(self, head: RequestHead, body: bytes) -> ReplicaAnswer:
        """One request through Hearth's app, whole, with where it ran."""
        status, headers, chunks = 500, [], []
        async with contextlib.aclosing(run_asgi(self._app, head, body)) as parts:
            async for part in parts:
                if isinstance(part, ResponseHead):
                    status, headers = part.status, part.headers
                else:
                    chunks.append(part)
        return ReplicaAnswer(self.info, status, headers, b"".join(chunks))

    async def __del__(self) -> None:
        # Ray Serve's graceful stop already let running requests finish.
        await self._lifespan.__aexit__(None, None, None)
