"""The cluster's front door: a small Ray Serve deployment behind Ray's HTTP proxy.

On a plain HTTP ingress a request router cannot see the body, so this one reads it, computes the
conversation's affinity key (hearth.cluster.affinity) and forwards the raw request to a Hearth
replica through a deployment handle, with the key as the session id the router hashes
(hearth.cluster.router). The answer streams back as the replica's app sends it; when the client
leaves, the replica call is cancelled, which disconnects the request inside the replica.

/health and /api/ps are answered here for the whole cluster: each running replica is asked for
its own, and the answers are listed with the replica's id and node.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse
from ray import serve
from ray.exceptions import RayActorError, RayError
from ray.serve.exceptions import BackPressureError, RayServeException, ReplicaUnavailableError
from ray.serve.handle import DeploymentHandle, DeploymentResponseGenerator
from starlette.types import ASGIApp, Receive, Scope, Send

from hearth.cluster.affinity import affinity_key
from hearth.cluster.bridge import RequestHead, ResponseHead
from hearth.cluster.replica import ReplicaAnswer
from hearth.cluster.router import pinned_session
from hearth.cluster.topology import ReplicaPlace, own_request_id, running_replicas
from hearth.errors import HearthError, PayloadTooLargeError, ServerOverloadedError
from hearth.server.http.errors import anthropic_error_event, install_error_handlers, sse_error_event

__all__ = ["ClusterIngress", "IngressState", "NoReplicaError", "create_ingress_app"]

logger = logging.getLogger(__name__)

# A replica that died before answering: the request is sent again (the router skips replicas it
# knows are dead; a new key spreads retries while it does not yet) until this many seconds pass.
FAILOVER_S = 30.0
_RETRY_PAUSE_S = 0.5
# /health and /api/ps: how long each replica gets to answer before it is listed as unreachable.
FANOUT_TIMEOUT_S = 3.0
_METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "HEAD"]


class NoReplicaError(HearthError):
    """No Hearth replica could take the request: none running, or each one tried died."""

    status_code = 503
    error_type = "server_error"
    default_code = "no_replica"


@dataclass(frozen=True, slots=True)
class IngressState:
    replicas: DeploymentHandle
    app_name: str
    deployment: str
    max_body_bytes: int
    affinity: bool  # route by conversation; else Ray's default router, no key


def _state(request: Request) -> IngressState:
    state: IngressState = request.app.state.cluster
    return state


def _request_head(request: Request, path: str) -> RequestHead:
    scope = request.scope
    client = scope.get("client")
    server = scope.get("server")
    return RequestHead(
        method=request.method,
        path=path,
        query_string=scope.get("query_string", b""),
        headers=[(bytes(k), bytes(v)) for k, v in scope.get("headers", [])],
        client=(str(client[0]), int(client[1])) if client else None,
        scheme=scope.get("scheme", "http"),
        server=(str(server[0]), int(server[1] or 0)) if server else None,
    )


def _app_path(request: Request) -> str:
    """The path under the application's route prefix, as Hearth's routes name it."""
    path: str = request.scope["path"]
    root: str = request.scope.get("root_path", "")
    if root and path.startswith(root):
        path = path[len(root) :] or "/"
    return path


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise PayloadTooLargeError(f"The request body is larger than {limit} bytes.")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLargeError(f"The request body is larger than {limit} bytes.")
        chunks.append(chunk)
    return b"".join(chunks)


def _failure_trailer(path: str, content_type: str, error: HearthError) -> bytes:
    """What ends a stream whose replica died midway: the API's own error event or line."""
    if content_type.startswith("text/event-stream"):
        if path == "/v1/messages" or path.startswith("/v1/messages/"):
            return anthropic_error_event(error)
        return sse_error_event(error)
    if content_type.startswith("application/x-ndjson"):
        return json.dumps({"error": error.message}).encode() + b"\n"
    return b""


async def _open_stream(
    state: IngressState, head: RequestHead, body: bytes, key: str | None
) -> tuple[ResponseHead, DeploymentResponseGenerator[Any]]:
    """Send the request to a replica and wait for its ResponseHead; on a replica that died
    before answering, send it again until FAILOVER_S."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + FAILOVER_S
    attempt = 0
    while True:
        session = key or ""
        if attempt:
            own_request_id()  # the failed call's routing may still be pending
            if key:
                session = f"{key}#{attempt}"  # the owner may still be on the ring: elsewhere
        stream: DeploymentResponseGenerator[Any] = state.replicas.options(
            stream=True, session_id=session
        ).forward.remote(head, body)
        try:
            first = await stream.__anext__()
        except BackPressureError as exc:
            raise ServerOverloadedError(
                "Every replica is busy and the cluster's queue is full; retry shortly.",
                headers={"Retry-After": "1"},
            ) from exc
        except (RayActorError, ReplicaUnavailableError) as exc:
            stream.cancel()
            attempt += 1
            if loop.time() >= deadline:
                raise NoReplicaError(
                    "The replica serving this request stopped, and no other took it in time."
                ) from exc
            logger.warning("A replica failed before answering (%s); sending again", exc)
            await asyncio.sleep(_RETRY_PAUSE_S)
            continue
        except BaseException:
            stream.cancel()  # the client left while the prompt was still being read
            raise
        if not isinstance(first, ResponseHead):
            stream.cancel()
            raise RuntimeError("a replica answered without a response head")
        return first, stream


async def _rest_of(
    stream: DeploymentResponseGenerator[Any], path: str, content_type: str
) -> AsyncIterator[bytes]:
    try:
        async for chunk in stream:
            yield chunk
    except (RayError, RayServeException) as exc:  # its node left, or its process died
        logger.warning("A replica failed mid-answer: %s", exc)
        yield _failure_trailer(
            path, content_type, NoReplicaError("The replica serving this request failed.")
        )


class _ForwardedStream(StreamingResponse):
    """The rest of a replica's answer. However the response ends, the replica call is cancelled
    here, synchronously, so the replica's request sees a disconnect and frees its slot: not in a
    `finally` of `_rest_of`, which a client that left mid-chunk leaves suspended at its `yield`
    until GC."""

    def __init__(
        self, stream: DeploymentResponseGenerator[Any], path: str, head: ResponseHead
    ) -> None:
        super().__init__(
            _rest_of(stream, path, _header(head, b"content-type")), status_code=head.status
        )
        self.raw_headers = list(head.headers)
        self._stream = stream

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._stream.cancel()  # a no-op once the answer is complete


async def forward(request: Request) -> Response:
    state = _state(request)
    path = _app_path(request)
    body = await _read_body(request, state.max_body_bytes)
    key = affinity_key(request.method, request.headers, body) if state.affinity else None
    head, stream = await _open_stream(state, _request_head(request, path), body, key)
    return _ForwardedStream(stream, path, head)


def _header(head: ResponseHead | ReplicaAnswer, name: bytes) -> str:
    for key, value in head.headers:
        if key.lower() == name:
            return value.decode("latin-1")
    return ""


@dataclass(frozen=True, slots=True)
class _Asked:
    place: ReplicaPlace
    answer: ReplicaAnswer | None
    problem: str | None = None


async def _ask_every_replica(request: Request, path: str) -> list[_Asked]:
    state = _state(request)
    head = _request_head(request, path)
    places = await running_replicas(state.app_name, state.deployment)

    async def ask(place: ReplicaPlace) -> _Asked:
        own_request_id()  # each ask runs in its own task, with a copy of the context
        pinned = state.replicas.options(session_id=pinned_session(place.replica))
        call = pinned.answer.remote(head, b"")

        async def whole() -> ReplicaAnswer:
            answer: ReplicaAnswer = await call
            return answer

        try:
            return _Asked(place, await asyncio.wait_for(whole(), FANOUT_TIMEOUT_S))
        except TimeoutError:
            call.cancel()
            return _Asked(place, None, f"no answer in {FANOUT_TIMEOUT_S:.0f}s")
        except (RayError, RayServeException) as exc:
            return _Asked(place, None, type(exc).__name__)

    return list(await asyncio.gather(*(ask(place) for place in places)))


def _where(asked: _Asked) -> dict[str, Any]:
    return {
        "replica": asked.place.replica,
        "node_id": asked.place.node_id,
        "node_ip": asked.place.node_ip,
    }


def _refusal(asked: list[_Asked]) -> Response | None:
    """A replica's own refusal (a missing or wrong API key: 401), passed on as it answered."""
    for one in asked:
        if one.answer is not None and one.answer.status >= 400:
            headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in one.answer.headers}
            headers.pop("content-length", None)
            return Response(one.answer.body, status_code=one.answer.status, headers=headers)
    return None


async def cluster_health(request: Request) -> Response:
    """Every replica's /health, with its node; top-level totals over the replicas that answered.
    200 while at least one replica answers; 503 with the same body when none does."""
    asked = await _ask_every_replica(request, "/health")
    if refused := _refusal(asked):
        return refused
    replicas: list[dict[str, Any]] = []
    totals = {"slots_total": 0, "slots_in_use": 0, "queue_length": 0}
    models: list[str] = []
    for one in asked:
        if one.answer is None:
            replicas.append({**_where(one), "status": "unreachable", "error": one.problem})
            continue
        health: dict[str, Any] = json.loads(one.answer.body)
        for name in totals:
            totals[name] += int(health.get(name, 0))
        if health.get("model") not in models:
            models.append(health["model"])
        replicas.append(
            {
                **_where(one),
                "status": health.get("status", "ok"),
                "model": health.get("model"),
                "slots_total": health.get("slots_total"),
                "slots_in_use": health.get("slots_in_use"),
                "queue_length": health.get("queue_length"),
                "models": health.get("models", []),
                "engine": health.get("engine", {}),
            }
        )
    answering = sum(1 for one in asked if one.answer is not None)
    body = {
        "status": "ok" if answering else "unavailable",
        "cluster": True,
        "model": models[0] if models else None,
        "replicas_running": len(asked),
        "replicas_answering": answering,
        **totals,
        "replicas": replicas,
    }
    return JSONResponse(body, status_code=200 if answering else 503)


async def cluster_ps(request: Request) -> Response:
    """/api/ps over the cluster: each replica's loaded models, with the replica and its node."""
    asked = await _ask_every_replica(request, "/api/ps")
    if refused := _refusal(asked):
        return refused
    models: list[dict[str, Any]] = []
    for one in asked:
        if one.answer is not None:
            for model in json.loads(one.answer.body).get("models", []):
                models.append({**model, **_where(one)})
    return JSONResponse({"models": models})


def create_ingress_app(state: IngressState) -> FastAPI:
    # Hearth's /openapi.json and /docs come from a replica, like every other route.
    app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)
    app.state.cluster = state
    install_error_handlers(app)
    app.add_api_route("/health", cluster_health, methods=["GET"])
    app.add_api_route("/api/ps", cluster_ps, methods=["GET"])
    app.add_api_route("/{path:path}", forward, methods=_METHODS)
    return app


class ClusterIngress:
    """The ingress deployment's class (hearth.cluster.app deploys it with serve.ingress)."""

    def __init__(
        self, replicas: DeploymentHandle, deployment: str, max_body_bytes: int, affinity: bool
    ) -> None:
        # The name it was deployed under (`serve run --name`, `hearth cluster serve --app-name`).
        app_name = serve.get_replica_context().app_name
        self._state = IngressState(replicas, app_name, deployment, max_body_bytes, affinity)

    def __serve_build_asgi_app__(self) -> ASGIApp:
        return create_ingress_app(self._state)
