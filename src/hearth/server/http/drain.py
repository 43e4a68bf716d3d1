"""A graceful stop. On the first SIGTERM or Ctrl-C the server drains: `DrainGate` refuses every
new request with 503 and `Retry-After` (in the shape of its API) while uvicorn goes on serving
the requests already admitted; they get `--drain-timeout` seconds to finish. Those still
running then are ended through their engines (a plain request gets a 503, a stream its API's
error event), and only then does uvicorn's own shutdown begin: it closes the sockets, and the
lifespan unloads the models. A second signal skips the wait (`Drain.hurry`).

`Drain` lives on `ServerState` (`app.state.hearth.drain`): the gate counts the requests it
admitted, /health reports `"status": "draining"`, and `hearth serve` runs `Drain.run`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send

from hearth.errors import HearthError, ServerDrainingError, ServerShuttingDownError
from hearth.server.http.errors import refusal

__all__ = ["RETRY_AFTER_S", "Drain", "DrainGate"]

logger = logging.getLogger(__name__)

# What a refused client is told: the server is going away; a restarted one is usually back
# within seconds.
RETRY_AFTER_S = 5
# Once the running requests were ended, how long their final events get to go out.
_FLUSH_S = 5.0
# Served while draining, and not counted as running requests: an operator watches the drain.
_ALWAYS_SERVED = frozenset({"/health", "/metrics"})


class Drain:
    """Whether the server drains, and the requests it admitted that have not ended yet."""

    def __init__(self) -> None:
        self.draining = False
        self.running = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._hurry = asyncio.Event()

    def opened(self) -> None:
        self.running += 1
        self._idle.clear()

    def closed(self) -> None:
        self.running -= 1
        if self.running == 0:
            self._idle.set()

    def hurry(self) -> None:
        """Stop waiting for running requests: end them now (a second signal)."""
        self._hurry.set()

    async def run(self, timeout_s: float, end_requests: Callable[[HearthError], None]) -> None:
        """Refuse new requests, wait up to `timeout_s` (or a `hurry`) for the running ones, end
        those left with 503 server_shutting_down, and wait a little for their last events."""
        self.draining = True
        started = time.monotonic()
        if self.running:
            logger.info(
                "Draining: %d requests running get up to %gs to finish; new ones get 503 "
                "(Ctrl-C again to stop at once)",
                self.running,
                timeout_s,
            )
            await _first(self._idle.wait(), self._hurry.wait(), timeout_s=timeout_s)
        if self.running:
            logger.warning(
                "Ending %d requests still running after %.1fs", self.running, _since(started)
            )
            error = ServerShuttingDownError("The server is shutting down; retry once it is back.")
            # A request that was loading its model or still preparing reaches an engine later:
            # end again until none is left.
            deadline = time.monotonic() + _FLUSH_S
            while self.running and time.monotonic() < deadline:
                end_requests(error)
                await _first(self._idle.wait(), timeout_s=0.5)
        else:
            logger.info("Drained in %.1fs", _since(started))


def _since(started: float) -> float:
    return time.monotonic() - started


async def _first(*waits: Any, timeout_s: float) -> None:
    """Wait until any of `waits` (coroutines) finishes, or `timeout_s` passes."""
    tasks = [asyncio.ensure_future(wait) for wait in waits]
    try:
        await asyncio.wait(tasks, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()


class DrainGate:
    """ASGI middleware: while the server drains, a new request gets 503 with `Retry-After` in
    its API's error shape; otherwise it counts the requests it lets through until they end."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        state = getattr(scope["app"].state, "hearth", None) if scope["type"] == "http" else None
        if state is None or scope["path"] in _ALWAYS_SERVED:
            await self.app(scope, receive, send)
            return
        drain: Drain = state.drain
        if drain.draining:
            error = ServerDrainingError(
                "The server is shutting down and admits no new requests; retry once it is back.",
                headers={"Retry-After": str(RETRY_AFTER_S)},
            )
            await refusal(error, scope)(scope, receive, send)
            return
        drain.opened()
        try:
            await self.app(scope, receive, send)
        finally:
            drain.closed()
