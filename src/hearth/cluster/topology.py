"""The two places hearth.cluster reaches into Ray Serve's internals (ray[serve] is pinned):

- which Hearth replicas are running, and on which nodes: the Serve controller's view, the same
  details Ray's dashboard serves at /api/serve/applications/ (ServeInstanceDetails);
- the internal request id a handle call carries, which the router matches a routed call by.
  Calls made while serving one HTTP request inherit its id; two of them pending at once (the
  /health fan-out, a retry after a failed call) could take each other's replica.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, replace
from typing import Any

import ray
from ray.serve._private.constants import SERVE_CONTROLLER_NAME, SERVE_NAMESPACE
from ray.serve._private.utils import generate_request_id
from ray.serve.context import _get_serve_request_context, _serve_request_context

__all__ = ["ReplicaPlace", "own_request_id", "replicas_in", "running_replicas"]


@dataclass(frozen=True, slots=True)
class ReplicaPlace:
    replica: str  # the replica's unique id, as the router knows it
    node_id: str
    node_ip: str


def replicas_in(details: dict[str, Any], app_name: str, deployment: str) -> list[ReplicaPlace]:
    """The RUNNING replicas of one deployment in a ServeInstanceDetails dict."""
    application = details.get("applications", {}).get(app_name) or {}
    replicas = (application.get("deployments", {}).get(deployment) or {}).get("replicas", [])
    return [
        ReplicaPlace(
            replica=str(r["replica_id"]),
            node_id=str(r.get("node_id") or ""),
            node_ip=str(r.get("node_ip") or ""),
        )
        for r in replicas
        if str(r.get("state")) in ("RUNNING", "ReplicaState.RUNNING")
    ]


async def running_replicas(app_name: str, deployment: str) -> list[ReplicaPlace]:
    # A lookup in the GCS: off the event loop.
    controller = await asyncio.to_thread(
        ray.get_actor, SERVE_CONTROLLER_NAME, namespace=SERVE_NAMESPACE
    )
    details: dict[str, Any] = await controller.get_serve_instance_details.remote()
    return replicas_in(details, app_name, deployment)


def own_request_id() -> None:
    """Give the handle calls made from here on, in this task's context, an internal request id
    of their own."""
    current = _get_serve_request_context()  # the rest of it (route, request id...) is kept
    _serve_request_context.set(replace(current, _internal_request_id=generate_request_id()))
