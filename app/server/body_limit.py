"""The cap on request bodies: one client must not make the server read or hold more than a
request may be. A body is refused with a 413 as soon as it is known to be too big (its declared
length, or the bytes counted while it arrives), never after it was read whole.
"""
from __future__ import annotations

from fastapi.responses import JSONResponse

from app.server.schema import error_body


class LimitRequestBody:
    """Reads each request's body up to `max_bytes` and hands it to the app in one piece; a body
    over the cap is a 413 at once. The rest of a refused body is read and dropped by the
    protocol (so the client still reads its 413), within the body deadline."""

    def __init__(self, app, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_bytes:
            await self._too_large(scope, receive, send, f" ({declared} bytes)")
            return
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client left before the body was in
                return
            body += message.get("body", b"")
            if len(body) > self.max_bytes:
                await self._too_large(scope, receive, send, "")
                return
            if not message.get("more_body", False):
                break

        whole: list[dict] = [{"type": "http.request", "body": bytes(body), "more_body": False}]
        del body

        async def replay():
            return whole.pop() if whole else await receive()  # then http.disconnect, when it comes

        await self.app(scope, replay, send)

    async def _too_large(self, scope, receive, send, size: str) -> None:
        message = (f"The request body{size} is larger than this server accepts ({self.max_bytes} bytes; "
                   f"`folio serve --max-request-bytes` sets the limit).")
        response = JSONResponse(error_body(message, code="request_too_large"), status_code=413)
        await response(scope, receive, send)


def _content_length(scope) -> int | None:
    """The declared length (the protocol refuses a malformed one before the app is called)."""
    for name, value in scope["headers"]:
        if name == b"content-length" and value.isdigit():
            return int(value)
    return None
