"""Hearth on a Ray Serve cluster: replicas of Hearth's own app and engine behind an ingress that
routes each conversation to the replica holding its KV cache (docs/cluster.md).

`serve run hearth.cluster:build_app model=smollm2:135m min_replicas=1 max_replicas=4`, or
`hearth cluster serve --address ADDR ...`. Needs the `cluster` extra (`ray[serve]`), imported
only when the application is built: `hearth.cluster.settings` stays light for the CLI."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hearth.cluster.app import build_app, build_application
    from hearth.cluster.settings import ClusterSettings

__all__ = ["ClusterSettings", "build_app", "build_application"]


def __getattr__(name: str) -> Any:
    if name in ("build_app", "build_application"):
        from hearth.cluster import app

        return getattr(app, name)
    if name == "ClusterSettings":
        from hearth.cluster.settings import ClusterSettings

        return ClusterSettings
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
