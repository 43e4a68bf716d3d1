"""A request body limit, enforced before the body is buffered (413 in the route's error shape)."""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from hearth.errors import PayloadTooLargeError
from hearth.server.http.errors import refusal

__all__ = ["BodySizeLimit"]


class BodySizeLimit:
    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # A GGUF sent for /api/create is as big as the model; its route checks its sha256.
        if scope["type"] != "http" or scope["path"].startswith("/api/blobs/"):
            await self.app(scope, receive, send)
            return
        error = PayloadTooLargeError(
            f"Request body too large: the limit is {self.max_bytes} bytes.", param=None
        )

        for name, value in scope.get("headers", ()):
            if name == b"content-length" and value.isdigit() and int(value) > self.max_bytes:
                await refusal(error, scope)(scope, receive, send)
                return

        received = 0
        exceeded = False

        async def limited_receive() -> Message:
            nonlocal received, exceeded
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:  # a chunked upload with no content-length
                    exceeded = True
                    raise error
            return message

        async def guarded_send(message: Message) -> None:
            # The framework may turn the read failure into its own 400; answer 413 instead.
            if exceeded:
                if message["type"] == "http.response.start":
                    await refusal(error, scope)(scope, receive, send)
                return
            await send(message)

        await self.app(scope, limited_receive, guarded_send)
