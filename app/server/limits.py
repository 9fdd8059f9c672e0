"""How much one request may ask of `folio serve` (the command line sets these; nothing heavy is
imported here, so `folio --help` stays instant)."""
from __future__ import annotations

from dataclasses import dataclass

MiB = 1 << 20


@dataclass(frozen=True)
class ServerLimits:
    max_request_bytes: int = 2 * MiB  # a body: 128k tokens of prompt are about 0.6 MiB of JSON
    max_embedding_inputs: int = 256  # texts in one /v1/embeddings request
    header_timeout: float = 5.0  # seconds for a request's headers (see app.server.deadlines)
    body_timeout: float = 30.0  # seconds for its body, from the end of the headers
