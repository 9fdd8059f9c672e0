"""What a chat is made of, as plain data shared by the history (SQLite) and the chat model (Qt)."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from app.wording import answer_summary

# An answer's life: pending (prompt being built) -> streaming -> done | stopped | error.
# "interrupted" is a streaming answer found in the history after a crash or a kill.
PENDING, STREAMING, DONE = "pending", "streaming", "done"
STOPPED, ERROR, INTERRUPTED = "stopped", "error", "interrupted"
IN_PROGRESS = (PENDING, STREAMING)


@dataclass
class SourceRef:
    """One passage given to the model for an answer, and whether the answer cited it."""

    number: int
    doc_id: str
    path: str
    page: int | None
    snippet: str
    pinned: bool = False
    cited: bool = False
    start: int = 0        # the passage's char offsets in the document text, to show it again
    end: int = 0

    @property
    def name(self) -> str:
        return Path(self.path).name

    @property
    def label(self) -> str:
        page = f", p. {self.page}" if self.page is not None else ""
        return f"[{self.number}] {self.name}{page}"

    @classmethod
    def from_dict(cls, d: dict) -> SourceRef:
        return cls(int(d["number"]), str(d["doc_id"]), str(d["path"]), d.get("page"), str(d.get("snippet", "")),
                   bool(d.get("pinned", False)), bool(d.get("cited", False)), int(d.get("start", 0)),
                   int(d.get("end", 0)))


@dataclass
class AnswerStats:
    """Per-answer numbers from `RequestOutput.metrics`, kept after the engine forgets them."""

    ttft_s: float | None
    tokens_per_s: float | None
    generated_tokens: int
    prompt_tokens: int
    cached_tokens: int
    finish_reason: str | None = None
    ram_cached_tokens: int = 0  # of cached_tokens: loaded from host RAM
    disk_cached_tokens: int = 0  # of cached_tokens: read from disk

    @classmethod
    def from_metrics(cls, metrics, finish_reason: str | None) -> AnswerStats:
        return cls(metrics.ttft_s, metrics.decode_tokens_per_s, metrics.num_generated_tokens,
                   metrics.num_prompt_tokens, metrics.num_cached_tokens, finish_reason,
                   metrics.num_ram_cached_tokens, metrics.num_disk_cached_tokens)

    @classmethod
    def from_dict(cls, d: dict) -> AnswerStats:
        return cls(d.get("ttft_s"), d.get("tokens_per_s"), int(d.get("generated_tokens", 0)),
                   int(d.get("prompt_tokens", 0)), int(d.get("cached_tokens", 0)), d.get("finish_reason"),
                   int(d.get("ram_cached_tokens", 0)), int(d.get("disk_cached_tokens", 0)))

    def summary(self) -> str:
        return answer_summary(self.ttft_s, self.tokens_per_s, self.generated_tokens, self.cached_tokens,
                              self.prompt_tokens, self.finish_reason, self.ram_cached_tokens,
                              self.disk_cached_tokens)


@dataclass
class ChatMessage:
    role: str                      # "user" | "assistant"
    content: str
    status: str = DONE
    id: int | None = None          # row id in the history once saved
    sources: list[SourceRef] = field(default_factory=list)
    stats: AnswerStats | None = None
    error: str | None = None
    waiting_for: str = ""          # while pending: what the answer waits for (not saved)

    @property
    def in_progress(self) -> bool:
        return self.status in IN_PROGRESS

    def prompt_dict(self) -> dict[str, str]:
        return {"role": self.role, "content": self.content}

    def sources_json(self) -> list[dict]:
        return [asdict(s) for s in self.sources]

    def stats_json(self) -> dict | None:
        return asdict(self.stats) if self.stats is not None else None
