"""The HTTP server: the app factory and its state; `core` (the protocol-free turn), `http` (the
plumbing every API crosses), and a package per API surface, each with its own router."""

from hearth.server.app import create_app

__all__ = ["create_app"]
