"""The Ray Serve application: an ingress deployment in front of an autoscaled Hearth replica
deployment. `build_app` is Ray's application-builder form:

    serve run hearth.cluster:build_app model=smollm2:135m min_replicas=1 max_replicas=4
"""

from __future__ import annotations

from typing import Any

from ray import serve
from ray.serve import Application
from ray.serve.config import AutoscalingConfig, RequestRouterConfig

from hearth.cluster.ingress import ClusterIngress
from hearth.cluster.replica import HearthReplica
from hearth.cluster.router import AffinityRouter, PowerOfTwoRouter
from hearth.cluster.settings import ClusterSettings, split_args

__all__ = ["INGRESS_DEPLOYMENT", "REPLICA_DEPLOYMENT", "build_app", "build_application"]

REPLICA_DEPLOYMENT = "HearthReplica"
INGRESS_DEPLOYMENT = "HearthIngress"
# The ingress sits on the head node, beside the controller and the proxy: a worker node that
# leaves takes only its replicas with it. (Ray gives the head node this resource.)
_HEAD_NODE = {"node:__internal_head__": 0.001}


def build_app(args: dict[str, Any]) -> Application:
    """`serve run`'s builder: key=value arguments, Hearth's serve flags and the cluster's
    (hearth.cluster.settings), e.g. model=smollm2:135m parallel=4 max_replicas=4."""
    return build_application(split_args(args))


def build_application(settings: ClusterSettings) -> Application:
    serve_settings = settings.serve_settings()
    router = AffinityRouter if settings.routing == "affinity" else PowerOfTwoRouter
    replica = serve.deployment(HearthReplica).options(
        name=REPLICA_DEPLOYMENT,
        ray_actor_options={
            "num_cpus": settings.replica_num_cpus,
            "num_gpus": settings.replica_gpus,
        },
        max_ongoing_requests=settings.replica_max_ongoing,
        max_queued_requests=settings.max_queued_requests,
        autoscaling_config=AutoscalingConfig(
            min_replicas=settings.min_replicas,
            max_replicas=settings.max_replicas,
            initial_replicas=settings.min_replicas,
            target_ongoing_requests=settings.target_ongoing_requests,
            upscale_delay_s=settings.upscale_delay_s,
            downscale_delay_s=settings.downscale_delay_s,
            look_back_period_s=settings.look_back_period_s,
        ),
        request_router_config=RequestRouterConfig(request_router_class=router),
        # A replica being replaced or scaled down first lets its requests finish, as `hearth
        # serve` drains on SIGTERM.
        graceful_shutdown_timeout_s=serve_settings.drain_timeout,
    )
    ingress = serve.deployment(serve.ingress()(ClusterIngress)).options(
        name=INGRESS_DEPLOYMENT,
        num_replicas=1,
        ray_actor_options={"num_cpus": 0, "resources": _HEAD_NODE},
        max_ongoing_requests=100_000,  # it only forwards; the replicas' limits apply
    )
    return ingress.bind(
        replica.bind(settings.serve_flags),
        REPLICA_DEPLOYMENT,
        serve_settings.max_body_bytes,
        settings.routing == "affinity",
    )
