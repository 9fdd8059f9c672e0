"""A document library: files in, searchable chunks out, one folder on disk.

`Library.add` is blocking and meant for a worker thread; it reports progress per file through a
callback and stops between embedding batches when its cancel event is set. Each file gets its own
`FileResult`: one bad file never stops the others, and never leaves a trace in the library.
"""
from __future__ import annotations

import logging
import os
import stat
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from rag.checksums import file_sha256
from rag.chunking import Chunk, ChunkingConfig, chunk_document
from rag.embedder import Embedder
from rag.loaders import NOT_A_REGULAR_FILE, DocumentError, EmptyDocument, is_supported, load_document
from rag.paths import display_name
from rag.retrieve import Hit, Mode, search
from rag.store import DocumentInfo, Store

log = logging.getLogger(__name__)

STATUSES = ("added", "updated", "unchanged", "duplicate", "failed", "cancelled")


class CancelFlag(Protocol):
    def is_set(self) -> bool: ...


@dataclass(frozen=True)
class IndexProgress:
    path: Path
    file_index: int       # 0-based position in this `add` call
    file_count: int
    stage: str            # "reading", "embedding", then "done", "failed", "cancelled" or "skipped"
    fraction: float       # of this file, 0..1


@dataclass(frozen=True)
class FileResult:
    path: Path
    status: str           # one of STATUSES
    doc_id: str | None = None
    error: str | None = None   # one line for the user: why it failed, or what it duplicates
    num_chunks: int = 0


@dataclass
class IndexReport:
    results: list[FileResult] = field(default_factory=list)

    @property
    def added(self) -> list[FileResult]:
        return [r for r in self.results if r.status in ("added", "updated")]

    @property
    def failed(self) -> list[FileResult]:
        return [r for r in self.results if r.status == "failed"]


_FINAL_STAGE = {"added": "done", "updated": "done", "failed": "failed", "cancelled": "cancelled"}


class _Cancelled(Exception):
    pass


class Library:
    def __init__(self, path: str | os.PathLike, *, embedder: Embedder | None = None,
                 chunking: ChunkingConfig = ChunkingConfig()) -> None:
        self.path = Path(path)
        self.embedder = embedder or Embedder()
        self.chunking = chunking
        self._store = Store(self.path)

    def close(self) -> None:
        self._store.close()

    def __enter__(self) -> Library:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ reading

    def documents(self) -> list[DocumentInfo]:
        return self._store.documents()

    def document(self, doc_id: str) -> DocumentInfo | None:
        return self._store.document(doc_id)

    def document_text(self, doc_id: str) -> tuple[str, list[dict]]:
        """The whole text and its sections ({start, end, page, title}), to pin it into a prompt."""
        return self._store.text(doc_id)

    def is_empty(self) -> bool:
        """Whether nothing is indexed yet (not even part of a document being added)."""
        return self._store.is_empty()

    def search(self, query: str, k: int = 5, doc_ids: list[str] | None = None, mode: Mode = "hybrid") -> list[Hit]:
        return search(self._store, self.embedder.embed, query, k, mode, doc_ids)

    # ------------------------------------------------------------------ writing

    def remove(self, doc_id: str) -> None:
        try:
            self._store.remove(doc_id)
        except KeyError:
            raise KeyError(f"no document {doc_id!r} in this library") from None

    def add(self, paths: Iterable[str | os.PathLike], progress: Callable[[IndexProgress], None] | None = None,
            cancel: CancelFlag | None = None) -> IndexReport:
        files = expand(paths)
        report = IndexReport()
        for i, path in enumerate(files):
            def tell(stage: str, fraction: float, i=i, path=path) -> None:
                if progress is not None:
                    progress(IndexProgress(path, i, len(files), stage, fraction))

            if cancel is not None and cancel.is_set():
                report.results.append(FileResult(path, "cancelled"))
                continue
            try:
                result = self._add_file(path, tell, cancel)
            except Exception as e:  # a bug or a full disk: this file fails, the others go on
                log.exception("indexing %s failed", path)
                problem = display_name(f"{type(e).__name__}: {e}")
                result = FileResult(path, "failed",
                                    error=f"{display_name(path.name)}: could not be indexed ({problem})")
            report.results.append(result)
            tell(_FINAL_STAGE.get(result.status, "skipped"), 1.0)
        return report

    def _add_file(self, path: Path, tell: Callable[[str, float], None], cancel: CancelFlag | None) -> FileResult:
        tell("reading", 0.0)
        try:
            mode = path.stat().st_mode
            if stat.S_ISDIR(mode):  # expand() lists a folder only when it cannot be listed
                return FileResult(path, "failed", error=_unlistable(path))
            if not stat.S_ISREG(mode):  # hashing a pipe or /dev/zero would never end
                return FileResult(path, "failed", error=f"{display_name(path.name)}: {NOT_A_REGULAR_FILE}")
            content_hash = file_sha256(path)
        except OSError as e:
            return FileResult(path, "failed", error=_unreadable(path, e))
        current = self._store.find(source=path)
        if current is not None and current.content_hash == content_hash:
            return FileResult(path, "unchanged", current.doc_id, num_chunks=current.num_chunks)
        twin = self._store.find(content_hash=content_hash)
        if twin is not None:
            if current is not None:  # the file now holds another document's text: its old version is wrong
                self._store.remove(current.doc_id)
            return FileResult(path, "duplicate", twin.doc_id, error=f"same content as {display_name(twin.source)}",
                              num_chunks=twin.num_chunks)
        def pages_read(done: int, total: int) -> None:  # each whole percent once: at most 100 updates
            if done * 100 // total != (done - 1) * 100 // total:
                tell("reading", done / total)

        try:
            doc = load_document(path, progress=pages_read)
            chunks = chunk_document(doc, self.embedder.count_tokens, self.chunking)
            if not chunks:
                raise EmptyDocument(f"{display_name(path.name)}: no text to index")
        except DocumentError as e:
            return FileResult(path, "failed", error=str(e))
        tell("reading", 1.0)

        def embedded(done: int) -> None:
            if cancel is not None and cancel.is_set():
                raise _Cancelled
            tell("embedding", done / len(chunks))

        search_texts = [search_text(doc.title, c) for c in chunks]
        try:
            vectors = self.embedder.embed(search_texts, progress=embedded)
            if cancel is not None and cancel.is_set():  # asked for during the last batch
                raise _Cancelled
        except _Cancelled:
            return FileResult(path, "cancelled")
        doc_id = content_hash[:16]
        info = DocumentInfo(doc_id, path, doc.title, doc.kind, doc.num_pages, len(chunks),
                            sum(c.num_tokens for c in chunks), content_hash, time.time())
        sections = [{"start": s.start, "end": s.end, "page": s.page, "title": s.title} for s in doc.sections]
        chunk_ids = self._store.begin_document(info, doc.text, sections, chunks, search_texts)
        try:
            self._store.add_vectors(doc_id, chunk_ids, vectors)
            self._store.finish_document(doc_id, replaces=current.doc_id if current else None)
        except BaseException:
            self._store.abandon(doc_id)
            raise
        return FileResult(path, "updated" if current else "added", doc_id, num_chunks=len(chunks))


def search_text(title: str, chunk: Chunk) -> str:
    """What is embedded and keyword-indexed for a chunk: the chunk under its document title and
    section heading, so a passage that never names its subject is still found by it (+3 to 7
    points of recall on `python -m rag.eval`). The user and the model see only the chunk text."""
    heading = " / ".join(dict.fromkeys(h for h in (title, chunk.section) if h))
    return f"{heading}\n{chunk.text}" if heading else chunk.text


def expand(paths: Iterable[str | os.PathLike]) -> list[Path]:
    """Files as given, and the supported files inside folders (sorted, hidden ones skipped).
    A named file is kept even if unsupported, and a folder that cannot be listed (no permission)
    is kept as itself, so the user hears why each was not indexed instead of nothing."""
    out: list[Path] = []
    for p in map(Path, paths):
        try:
            p = p.expanduser()
        except RuntimeError:  # "~someone" with no such user: kept as typed, reported as not found
            pass
        p = p.absolute()
        if not _is_dir(p):
            out.append(p)
            continue
        unlistable: list[Path] = []
        for root, dirs, names in os.walk(p, onerror=lambda e: unlistable.append(Path(e.filename))):
            out += unlistable  # in walk order: where the folder's files would have been
            unlistable.clear()
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            out += [Path(root, n) for n in sorted(names) if not n.startswith(".") and is_supported(n)]
        out += unlistable
    return list(dict.fromkeys(out))


def _is_dir(path: Path) -> bool:
    """Whether `path` is a folder; False where even that cannot be known (a path under a folder
    that may not be searched), so it is tried as a file and fails as one, with a reason."""
    try:
        return path.is_dir()
    except (OSError, ValueError):  # ValueError: a NUL in the name
        return False


def _unreadable(path: Path, error: OSError) -> str:
    name = display_name(path.name)
    if isinstance(error, FileNotFoundError):
        return f"{name}: file not found"
    return f"{name}: cannot be read ({error.strerror or display_name(str(error))})"


def _unlistable(folder: Path) -> str:
    try:
        os.scandir(folder).close()
    except OSError as e:
        return f"{display_name(folder.name)}: folder cannot be opened ({e.strerror or display_name(str(e))})"
    return f"{display_name(folder.name)}: is a folder, not a file"
