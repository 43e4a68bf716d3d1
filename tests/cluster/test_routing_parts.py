"""The cluster's pure parts, without Ray running: affinity keys, settings, the ASGI bridge, and
the controller's replica list."""

from __future__ import annotations

import asyncio
import gc
import json
from types import SimpleNamespace
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

pytest.importorskip("ray.serve", reason="needs the cluster extra: pip install 'hearth[cluster]'")

from ray.serve._private.common import RequestMetadata
from ray.serve._private.request_router.common import PendingRequest

from hearth.cluster.affinity import affinity_key
from hearth.cluster.bridge import RequestHead, ResponseHead, run_asgi
from hearth.cluster.ingress import _ForwardedStream
from hearth.cluster.replica import HearthReplica
from hearth.cluster.router import _pinned_ranks, pinned_session
from hearth.cluster.settings import split_args
from hearth.cluster.topology import replicas_in
from tests.asgi_leaving import leave_a_stream

SYSTEM = {"role": "system", "content": "You are a careful archivist."}


def _chat(*messages: dict[str, Any], model: str = "smollm2:135m") -> bytes:
    return json.dumps({"model": model, "messages": list(messages)}).encode()


def test_every_turn_of_a_chat_has_the_key_of_its_first() -> None:
    first = {"role": "user", "content": "Where are the 1911 ledgers?"}
    turn1 = _chat(SYSTEM, first)
    turn3 = _chat(
        SYSTEM,
        first,
        {"role": "assistant", "content": "Shelf 4."},
        {"role": "user", "content": "And 1912?"},
    )
    key = affinity_key("POST", {}, turn1)
    assert key is not None and key.startswith("conversation:")
    assert affinity_key("POST", {}, turn3) == key


def test_conversations_differ_by_system_prompt_first_message_and_model() -> None:
    first = {"role": "user", "content": "Hello"}
    keys = {
        affinity_key("POST", {}, _chat(SYSTEM, first)),
        affinity_key("POST", {}, _chat({"role": "system", "content": "Other."}, first)),
        affinity_key("POST", {}, _chat(SYSTEM, {"role": "user", "content": "Hi"})),
        affinity_key("POST", {}, _chat(SYSTEM, first, model="gemma3:270m")),
    }
    assert len(keys) == 4


@pytest.mark.parametrize(
    ("first", "later"),
    [
        # Anthropic Messages: `system` beside the messages.
        (
            {"model": "m", "system": "Be terse.", "messages": [{"role": "user", "content": "a"}]},
            {
                "model": "m",
                "system": "Be terse.",
                "messages": [
                    {"role": "user", "content": "a"},
                    {"role": "assistant", "content": "b"},
                    {"role": "user", "content": "c"},
                ],
            },
        ),
        # Responses: instructions and an input list.
        (
            {"model": "m", "instructions": "Hi.", "input": [{"role": "user", "content": "a"}]},
            {
                "model": "m",
                "instructions": "Hi.",
                "input": [
                    {"role": "user", "content": "a"},
                    {"role": "assistant", "content": "b"},
                    {"role": "user", "content": "c"},
                ],
            },
        ),
        # A raw prompt that grows turn by turn (/v1/completions, /api/generate).
        (
            {"model": "m", "prompt": "Q: first?\nA:"},
            {"model": "m", "prompt": "Q: first?\nA: yes\nQ: second?\nA:"},
        ),
    ],
)
def test_other_apis_keep_their_key_across_turns(
    first: dict[str, Any], later: dict[str, Any]
) -> None:
    key = affinity_key("POST", {}, json.dumps(first).encode())
    assert key is not None
    # A raw prompt keeps its first 2048 characters: here the whole first prompt is a prefix.
    if "prompt" in first:
        assert affinity_key("POST", {}, json.dumps(later).encode()) != key
        long_start = "x" * 2048
        grown = {"model": "m", "prompt": long_start + " and more"}
        assert affinity_key("POST", {}, json.dumps(grown).encode()) == affinity_key(
            "POST", {}, json.dumps({"model": "m", "prompt": long_start}).encode()
        )
    else:
        assert affinity_key("POST", {}, json.dumps(later).encode()) == key


def test_session_header_wins_and_nothing_conversational_has_no_key() -> None:
    body = _chat(SYSTEM, {"role": "user", "content": "Hello"})
    assert affinity_key("POST", {"x-session-id": "abc"}, body) == "session:abc"
    assert affinity_key("GET", {}, b"") is None
    assert affinity_key("POST", {}, b"not json") is None
    assert affinity_key("POST", {}, b"[1, 2]") is None
    assert affinity_key("POST", {}, json.dumps({"model": "m", "input": ""}).encode()) is None


def test_serve_run_arguments_split_into_replica_and_cluster_settings() -> None:
    settings = split_args(
        {"model": "smollm2:135m", "threads": "2", "parallel": "3", "max_replicas": "4"}
    )
    assert settings.max_replicas == 4 and settings.min_replicas == 1
    assert settings.serve_flags == {"model": "smollm2:135m", "threads": "2", "parallel": "3"}
    assert settings.replica_num_cpus == 2.0  # a replica reserves the cores it computes on
    assert settings.replica_max_ongoing == 6
    assert settings.serve_settings().parallel == 3


@pytest.mark.parametrize(
    ("args", "problem"),
    [
        ({"colour": "blue"}, "unknown argument(s): colour"),
        ({"min_replicas": "3", "max_replicas": "2"}, "must be at least min_replicas"),
        ({"parallel": "0"}, "parallel"),
        ({"routing": "random"}, "routing"),
    ],
)
def test_bad_arguments_are_refused_by_name(args: dict[str, str], problem: str) -> None:
    with pytest.raises(ValueError, match=problem.replace("(", r"\(").replace(")", r"\)")):
        split_args(args)


def _streaming_app(finished: list[str]) -> Starlette:
    async def stream(request: Request) -> StreamingResponse:
        body = await request.json()

        async def events() -> Any:
            try:
                for n in range(body["count"]):
                    yield f"data: {n}\n\n".encode()
                    await asyncio.sleep(0.01)
                finished.append("complete")
            except asyncio.CancelledError:
                finished.append("disconnected")
                raise

        return StreamingResponse(events(), media_type="text/event-stream")

    async def echo(request: Request) -> JSONResponse:
        return JSONResponse(
            {"path": request.url.path, "query": request.url.query, "key": request.headers["k"]},
            status_code=201,
        )

    return Starlette(routes=[Route("/stream", stream, methods=["POST"]), Route("/echo", echo)])


def test_the_bridge_carries_a_request_and_its_answer() -> None:
    async def scenario() -> list[ResponseHead | bytes]:
        head = RequestHead("GET", "/echo", b"a=1", [(b"k", b"v")], ("10.0.0.1", 5))
        return [part async for part in run_asgi(_streaming_app([]), head, b"")]

    head, body = asyncio.run(scenario())
    assert isinstance(head, ResponseHead) and head.status == 201
    assert isinstance(body, bytes)
    assert json.loads(body) == {"path": "/echo", "query": "a=1", "key": "v"}


def test_closing_the_bridge_disconnects_the_request() -> None:
    finished: list[str] = []

    async def scenario() -> list[bytes]:
        head = RequestHead("POST", "/stream", headers=[(b"content-type", b"application/json")])
        parts = run_asgi(_streaming_app(finished), head, json.dumps({"count": 1000}).encode())
        received = []
        async for part in parts:
            if isinstance(part, bytes):
                received.append(part)
                if len(received) == 3:
                    break
        await parts.aclose()  # what cancelling the replica call does
        return received

    received = asyncio.run(scenario())
    assert received == [b"data: 0\n\n", b"data: 1\n\n", b"data: 2\n\n"]
    assert finished == ["disconnected"]


def test_a_replica_call_cancelled_as_ray_cancels_it_disconnects_the_request_at_once() -> None:
    """Ray stops a streaming replica call by throwing CancelledError into the method's generator
    at its `yield`; the request inside must see its disconnect then, not when GC comes by."""
    finished: list[str] = []

    async def scenario() -> None:
        replica = SimpleNamespace(_app=_streaming_app(finished))
        head = RequestHead("POST", "/stream", headers=[(b"content-type", b"application/json")])
        forward = HearthReplica.forward(replica, head, json.dumps({"count": 1000}).encode())  # type: ignore[arg-type]
        parts = [await forward.__anext__() for _ in range(3)]
        assert parts[1:] == [b"data: 0\n\n", b"data: 1\n\n"]
        with pytest.raises(asyncio.CancelledError):
            await forward.athrow(asyncio.CancelledError())
        assert finished == ["disconnected"]  # before this returns, with `forward` still alive

    gc.disable()  # no collection may close a suspended generator behind the test's back
    try:
        asyncio.run(scenario())
    finally:
        gc.enable()


class _FakeReplicaStream:
    """What a DeploymentResponseGenerator gives the ingress: chunks, and cancel()."""

    def __init__(self) -> None:
        self.cancelled = False

    def __aiter__(self) -> _FakeReplicaStream:
        return self

    async def __anext__(self) -> bytes:
        await asyncio.sleep(0)
        return b"data: token\n\n"

    def cancel(self) -> None:
        self.cancelled = True


def test_a_client_leaving_mid_chunk_cancels_the_replica_call_at_once() -> None:
    """The client leaves while a chunk is being written (the socket's buffer full): Starlette
    cancels the response there, with `_rest_of` waiting at its yield; the replica call must be
    cancelled then, not when GC closes that generator."""
    stream = _FakeReplicaStream()

    async def scenario() -> None:
        response = _ForwardedStream(
            stream,  # type: ignore[arg-type]
            "/v1/chat/completions",
            ResponseHead(200, [(b"content-type", b"text/event-stream")]),
        )
        await leave_a_stream(response, mid_write=True)
        assert stream.cancelled

    gc.disable()
    try:
        asyncio.run(scenario())
    finally:
        gc.enable()


def test_a_pinned_request_whose_replica_is_gone_lets_its_routing_task_retire() -> None:
    """Ray's routing loop notices a cancelled request only when a choice offers some replica;
    a pinned ask for a dead replica that offered none kept its routing task looping forever,
    and two such tasks stopped every other request (seen after a node left)."""

    def pending(session: str, *, cancelled: bool) -> PendingRequest:
        async def make() -> PendingRequest:
            metadata = RequestMetadata(request_id="r", internal_request_id="i", session_id=session)
            request = PendingRequest(args=[], kwargs={}, metadata=metadata)
            if cancelled:
                request.future.cancel()
            return request

        return asyncio.run(make())

    survivor = SimpleNamespace(replica_id=SimpleNamespace(unique_id="alive"))
    candidates: list[Any] = [survivor]
    waiting = pending(pinned_session("gone"), cancelled=False)
    assert _pinned_ranks(candidates, waiting) == []  # wait: the caller's own deadline decides
    given_up = pending(pinned_session("gone"), cancelled=True)
    assert _pinned_ranks(candidates, given_up) == [candidates]  # lets Ray's loop see it is done
    assert _pinned_ranks(candidates, pending(pinned_session("alive"), cancelled=False)) == [
        [survivor]
    ]
    assert _pinned_ranks(candidates, pending("a conversation", cancelled=False)) is None


def test_the_controller_details_give_running_replicas_and_their_nodes() -> None:
    details = {
        "applications": {
            "hearth": {
                "deployments": {
                    "HearthReplica": {
                        "replicas": [
                            {"replica_id": "a1", "state": "RUNNING", "node_id": "n1",
                             "node_ip": "10.0.0.1"},
                            {"replica_id": "b2", "state": "STARTING", "node_id": "n2",
                             "node_ip": "10.0.0.2"},
                        ]
                    }
                }
            }
        }
    }  # fmt: skip
    places = replicas_in(details, "hearth", "HearthReplica")
    assert [(p.replica, p.node_id, p.node_ip) for p in places] == [("a1", "n1", "10.0.0.1")]
    assert replicas_in(details, "other", "HearthReplica") == []
