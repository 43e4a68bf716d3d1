"""The cluster's settings: Hearth's own (`ServeSettings`, for every replica) plus how the replicas
are placed, scaled and routed. `serve run hearth.cluster:build_app key=value ...` and `hearth
cluster serve --flag value ...` both end here, so the two accept the same names."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from hearth.settings import ServeSettings

__all__ = ["ClusterSettings", "split_args"]

# Which replica a request goes to: "affinity" keeps a conversation on the replica that holds its
# KV cache (consistent hashing on its affinity key); "pow2" is Ray Serve's default router (two
# random replicas, the shorter queue), the baseline bench/cluster.py measures against.
Routing = Literal["affinity", "pow2"]


class ClusterSettings(BaseModel):
    """How the replica deployment is built; every replica runs Hearth with `serve_flags`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    app_name: str = Field("hearth", description="Ray Serve application name.")
    route_prefix: str = Field("/", description="Where the application answers on the proxy.")
    min_replicas: int = Field(1, ge=1, description="Replicas kept however idle the cluster is.")
    max_replicas: int = Field(4, ge=1, description="Most replicas the autoscaler starts.")
    target_ongoing_requests: float = Field(
        2.0, gt=0, description="Requests per replica the autoscaler aims at (running + queued)."
    )
    upscale_delay_s: float = Field(
        10.0, ge=0, description="Seconds the load must stay above target before a replica is added."
    )
    downscale_delay_s: float = Field(
        300.0, ge=0, description="Seconds the load must stay below target before one is removed."
    )
    look_back_period_s: float = Field(
        30.0, gt=0, description="Seconds of load the autoscaler averages over."
    )
    replica_cpus: float | None = Field(
        None, ge=0, description="CPUs Ray reserves per replica (default: its --threads)."
    )
    replica_gpus: float = Field(0.0, ge=0, description="GPUs Ray reserves per replica.")
    max_ongoing_requests: int | None = Field(
        None,
        ge=1,
        description="Requests a replica takes before the router tries the next one on the ring "
        "(default: twice its --parallel).",
    )
    max_queued_requests: int = Field(
        256,
        ge=-1,
        description="Requests waiting in the ingress for a replica; past it, 429 (-1: no limit).",
    )
    routing: Routing = Field("affinity", description="'affinity' (by conversation) or 'pow2'.")
    serve_flags: dict[str, Any] = Field(
        default_factory=dict,
        description="Hearth's own settings (ServeSettings field names), given to every replica.",
    )

    @model_validator(mode="after")
    def _valid(self) -> ClusterSettings:
        if self.max_replicas < self.min_replicas:
            raise ValueError(
                f"max_replicas ({self.max_replicas}) must be at least min_replicas "
                f"({self.min_replicas})"
            )
        # Checked here, on the driver, so a bad flag fails before any replica starts; each
        # replica builds its own ServeSettings on its node (threads default to its cores).
        self.serve_settings()
        return self

    def serve_settings(self) -> ServeSettings:
        return ServeSettings(**self.serve_flags)

    @property
    def replica_num_cpus(self) -> float:
        if self.replica_cpus is not None:
            return self.replica_cpus
        threads = self.serve_flags.get("threads")
        return float(threads) if threads is not None else float(self.serve_settings().threads)

    @property
    def replica_max_ongoing(self) -> int:
        if self.max_ongoing_requests is not None:
            return self.max_ongoing_requests
        return 2 * self.serve_settings().parallel


def split_args(args: dict[str, Any]) -> ClusterSettings:
    """`serve run`'s key=value arguments (all strings) -> ClusterSettings: names of
    ServeSettings go to every replica, the rest are the cluster's. Raises ValueError."""
    cluster_fields = set(ClusterSettings.model_fields) - {"serve_flags"}
    unknown = [k for k in args if k not in cluster_fields and k not in ServeSettings.model_fields]
    if unknown:
        raise ValueError(f"unknown argument(s): {', '.join(sorted(unknown))}")
    cluster = {k: v for k, v in args.items() if k in cluster_fields}
    serve_flags = {k: v for k, v in args.items() if k in ServeSettings.model_fields}
    try:
        return ClusterSettings(**cluster, serve_flags=serve_flags)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            where = ".".join(str(part) for part in error["loc"])
            problems.append(f"{where}: {error['msg']}" if where else error["msg"])
        raise ValueError("; ".join(problems)) from exc
