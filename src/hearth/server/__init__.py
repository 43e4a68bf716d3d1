"""The HTTP layer: app factory, routes, serving, SSE, auth, and errors → HTTP in one place."""

from hearth.server.app import create_app

__all__ = ["create_app"]
