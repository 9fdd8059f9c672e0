"""Read deadlines for `folio serve`'s connections, so slow clients cannot hold them open.

uvicorn bounds only the idle time between requests (`timeout_keep_alive`): a client that opens a
connection and sends nothing, trickles its request headers, or starts a body and never finishes
it keeps its connection (and a task, and the body read so far) forever, and enough of them exhaust
the server. `DeadlineProtocol` is uvicorn's h11 protocol with two deadlines on top:

- headers: from the moment a connection can take a request (it was opened, or the last answer
  was sent) until that request's headers are in;
- body: from the end of the headers until the whole body is in.

A connection past its deadline is closed; one whose body was late first gets a 408 when nothing
was answered yet. The h11 protocol is chosen on purpose, even where httptools is installed: h11
also caps the headers it buffers (a 400 past 16 KiB still incomplete), where uvicorn's httptools
protocol takes any amount (5 MB of headers were accepted when tried).
"""
from __future__ import annotations

import asyncio
import json

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from app.server.limits import ServerLimits
from app.server.schema import error_body

HEADERS, BODY = "headers", "body"
PHASES = {h11.IDLE: HEADERS, h11.SEND_BODY: BODY}  # what the client owes us in each h11 state


def timeout_response() -> bytes:
    """A 408 in OpenAI's error shape, written raw: the app may be waiting for the body still."""
    body = json.dumps(error_body("The request body did not arrive in time; the connection is closed.",
                                 code="request_timeout")).encode()
    head = (f"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n\r\n")
    return head.encode("ascii") + body


class DeadlineProtocol(H11Protocol):
    """uvicorn's h11 protocol with a header and a body deadline; give it to `uvicorn.Config` as
    `http=DeadlineProtocol.under(limits)`."""

    limits = ServerLimits()

    @classmethod
    def under(cls, limits: ServerLimits) -> type[DeadlineProtocol]:
        """The protocol with the deadlines of `limits` (uvicorn makes one per connection)."""
        return type(cls.__name__, (cls,), {"limits": limits})

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._phase: str | None = None
        self._deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._watch()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._watch()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._watch()

    def connection_lost(self, exc: Exception | None) -> None:
        self._arm(None)
        super().connection_lost(exc)

    def _watch(self) -> None:
        """Keep the running deadline while the client owes the same thing; start the next one
        when that changes."""
        phase = None if self.transport.is_closing() else PHASES.get(self.conn.their_state)
        if phase != self._phase:
            self._arm(phase)

    def _arm(self, phase: str | None) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        self._phase = phase
        if phase is not None:
            seconds = self.limits.header_timeout if phase == HEADERS else self.limits.body_timeout
            self._deadline = self.loop.call_later(seconds, self._expired, phase, seconds)

    def _expired(self, phase: str, seconds: float) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        client = "%s:%d" % self.client if self.client else "a client"
        self.logger.info("closing the connection from %s: its request %s did not arrive within %g s",
                         client, phase, seconds)
        if phase == BODY and self.cycle is not None and not self.cycle.response_started:
            self.transport.write(timeout_response())
        self.transport.close()
