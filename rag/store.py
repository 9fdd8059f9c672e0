"""Where a library keeps its documents: a SQLite catalog (documents, chunk text, a BM25 index)
and a chromadb collection (chunk vectors), both inside the library folder.

chromadb has no transactions, so the catalog decides what exists. A document is written as
"indexing" first, its vectors next, and it is switched to "ready" in one SQLite transaction last;
search only sees ready documents. Opening a library removes whatever a crash left "indexing",
so a half-indexed document never survives a restart.
"""
from __future__ import annotations

import json
import logging
import os
import re
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rag.chunking import Chunk

COLLECTION = "chunks"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS documents (
    doc_id TEXT PRIMARY KEY,
    source TEXT NOT NULL,
    title TEXT NOT NULL,
    kind TEXT NOT NULL,
    num_pages INTEGER,
    num_chunks INTEGER NOT NULL,
    num_tokens INTEGER NOT NULL,
    content_hash TEXT NOT NULL,
    added_at REAL NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('indexing', 'ready')),
    text TEXT NOT NULL,
    sections TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS documents_source ON documents(source);
CREATE TABLE IF NOT EXISTS chunks (
    id INTEGER PRIMARY KEY AUTOINCREMENT,  -- never reused: a vector id names one chunk forever
    doc_id TEXT NOT NULL REFERENCES documents(doc_id),
    chunk_index INTEGER NOT NULL,
    text TEXT NOT NULL,
    start INTEGER NOT NULL,
    end INTEGER NOT NULL,
    page INTEGER,
    section TEXT,
    num_tokens INTEGER NOT NULL,
    UNIQUE (doc_id, chunk_index)
);
CREATE VIRTUAL TABLE IF NOT EXISTS chunk_terms USING fts5(text, tokenize='porter unicode61');
CREATE TABLE IF NOT EXISTS removed_vectors (doc_id TEXT PRIMARY KEY);
"""
_TERM = re.compile(r"\w+", re.UNICODE)
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DocumentInfo:
    doc_id: str
    source: Path
    title: str
    kind: str
    num_pages: int | None
    num_chunks: int
    num_tokens: int
    content_hash: str
    added_at: float


@dataclass(frozen=True)
class StoredChunk:
    doc_id: str
    source: Path
    chunk_index: int
    text: str
    start: int
    end: int
    page: int | None
    section: str | None


class LibraryError(Exception):
    """The library folder cannot be used (in use, unwritable, damaged); the message is for the user."""


class Store:
    """All reads and writes of one library folder. Thread-safe: one lock around the catalog.
    One process at a time: chromadb's files are not safe to share, and opening a library sweeps
    away documents left half-indexed, which would be another process's documents in progress."""

    def __init__(self, folder: Path) -> None:
        import chromadb
        from chromadb.config import Settings

        self._lock = threading.RLock()
        try:
            folder.mkdir(parents=True, exist_ok=True)
            self._owner = _lock_folder(folder)
        except OSError as e:
            raise LibraryError(f"cannot use the library folder {folder}: {e.strerror or e}") from None
        try:
            self._db = sqlite3.connect(folder / "catalog.sqlite3", check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
            self._chroma = chromadb.PersistentClient(path=str(folder / "vectors"),
                                                     settings=Settings(anonymized_telemetry=False))
            self._vectors = self._chroma.get_or_create_collection(
                COLLECTION, configuration={"hnsw": {"space": "cosine"}}, embedding_function=None)
            self._remove_unfinished()
        except Exception as e:
            self._owner.close()
            raise LibraryError(f"the library at {folder} cannot be opened: {e}") from e

    def close(self) -> None:
        with self._lock:
            self._db.close()
            self._chroma.close()
            self._owner.close()  # closing the file releases the lock

    # ------------------------------------------------------------------ catalog reads

    def documents(self) -> list[DocumentInfo]:
        rows = self._query("SELECT doc_id, source, title, kind, num_pages, num_chunks, num_tokens, content_hash, "
                           "added_at FROM documents WHERE state='ready' ORDER BY source, doc_id")
        return [DocumentInfo(r[0], _source_path(r[1]), *r[2:]) for r in rows]

    def document(self, doc_id: str) -> DocumentInfo | None:
        return self._one("doc_id", doc_id)

    def find(self, *, source: Path | None = None, content_hash: str | None = None) -> DocumentInfo | None:
        """The ready document at `source`, or else the one with `content_hash`."""
        if source is not None:
            return self._one("source", _source_value(source))
        return self._one("content_hash", content_hash)

    def _one(self, column: str, value) -> DocumentInfo | None:
        rows = self._query(f"SELECT doc_id, source, title, kind, num_pages, num_chunks, num_tokens, content_hash, "
                           f"added_at FROM documents WHERE state='ready' AND {column}=? LIMIT 1", (value,))
        return DocumentInfo(rows[0][0], _source_path(rows[0][1]), *rows[0][2:]) if rows else None

    def text(self, doc_id: str) -> tuple[str, list[dict]]:
        """The whole document text and its sections ({start, end, page, title})."""
        rows = self._query("SELECT text, sections FROM documents WHERE doc_id=? AND state='ready'", (doc_id,))
        if not rows:
            raise KeyError(doc_id)
        return rows[0][0], json.loads(rows[0][1])

    def chunks(self, ids: list[int]) -> dict[int, StoredChunk]:
        if not ids:
            return {}
        marks = ",".join("?" * len(ids))
        rows = self._query(
            f"SELECT c.id, c.doc_id, d.source, c.chunk_index, c.text, c.start, c.end, c.page, c.section "
            f"FROM chunks c JOIN documents d USING (doc_id) WHERE c.id IN ({marks}) AND d.state='ready'", ids)
        return {r[0]: StoredChunk(r[1], _source_path(r[2]), *r[3:]) for r in rows}

    # ------------------------------------------------------------------ search

    def passage(self, doc_id: str, start: int, end: int, page: int | None, chars: int) -> tuple[int, int, str]:
        """The document text around [start, end): about `chars` characters centred on it (what
        one side cannot use goes to the other), never past what its page's chunks cover, cut at
        whitespace. Returns (start, end, text) with the text stripped."""
        with self._lock:
            low, high = self._db.execute("SELECT min(start), max(end) FROM chunks WHERE doc_id=? AND page IS ?",
                                         (doc_id, page)).fetchone()
            if low is None:
                raise KeyError(doc_id)
            room = max(0, chars - (end - start))
            a = max(low, start - room // 2)
            b = min(high, end + room - (start - a))
            a = max(low, start - (room - (b - end)))
            row = self._db.execute("SELECT substr(text, ?, ?) FROM documents WHERE doc_id=?",
                                   (a + 1, b - a, doc_id)).fetchone()
        text = row[0] if row else ""
        head = 0 if a == start else next((i + 1 for i in range(start - a) if text[i].isspace()), start - a)
        tail = len(text) if b == end else next((i for i in range(len(text) - 1, end - a - 1, -1)
                                                 if text[i].isspace()), end - a)
        piece = text[head:tail]
        lead = len(piece) - len(piece.lstrip())
        return a + head + lead, a + head + len(piece.rstrip()), piece.strip()

    def is_empty(self) -> bool:
        """Whether no chunk has a vector yet: then a search has nothing to find, and the question
        need not be embedded (which, with no library in use, would load the embedder for nothing)."""
        return self._vectors.count() == 0

    def nearest(self, vector: np.ndarray, n: int, doc_ids: list[str] | None = None) -> list[tuple[int, float]]:
        """(chunk id, cosine similarity), best first."""
        total = self._vectors.count()
        if total == 0:
            return []
        where = {"doc_id": {"$in": doc_ids}} if doc_ids else None
        result = self._vectors.query(query_embeddings=vector[None, :], n_results=min(n, total), where=where,
                                     include=["distances"])
        return [(int(i), 1.0 - float(d)) for i, d in zip(result["ids"][0], result["distances"][0])]

    def similarities(self, vector: np.ndarray, ids: list[int]) -> dict[int, float]:
        """Cosine similarity of `vector` to the stored vectors of `ids` (those that have one)."""
        if not ids:
            return {}
        found = self._vectors.get(ids=[str(i) for i in ids], include=["embeddings"])
        if not found["ids"]:
            return {}
        stored = np.asarray(found["embeddings"], dtype=np.float32)
        scores = stored @ vector.astype(np.float32) / (np.linalg.norm(stored, axis=1) * np.linalg.norm(vector))
        return {int(i): float(s) for i, s in zip(found["ids"], scores)}

    def keyword(self, query: str, n: int, doc_ids: list[str] | None = None,
                within: list[int] | None = None) -> list[tuple[int, float]]:
        """(chunk id, BM25 score, higher is better), best first. Any query word may match.
        `within`: score only these chunks (BM25 is computed over the whole index all the same)."""
        terms = {t.lower() for t in _TERM.findall(query)}
        if not terms or within == []:
            return []
        match = " OR ".join(f'"{t}"' for t in sorted(terms))
        sql = ("SELECT t.rowid, -bm25(chunk_terms) FROM chunk_terms t JOIN chunks c ON c.id = t.rowid "
               "JOIN documents d ON d.doc_id = c.doc_id AND d.state = 'ready' WHERE chunk_terms MATCH ?")
        args: list = [match]
        if doc_ids:
            sql += f" AND c.doc_id IN ({','.join('?' * len(doc_ids))})"
            args += doc_ids
        if within is not None:
            sql += f" AND t.rowid IN ({','.join('?' * len(within))})"
            args += within
        return [(r[0], r[1]) for r in self._query(sql + " ORDER BY bm25(chunk_terms) LIMIT ?", [*args, n])]

    # ------------------------------------------------------------------ writes

    def begin_document(self, info: DocumentInfo, text: str, sections: list[dict], chunks: list[Chunk],
                       search_texts: list[str]) -> list[int]:
        """Write the document as "indexing" with its chunks (`search_texts` are what keyword search
        indexes for each); returns the chunk ids for the vectors."""
        with self._lock, self._transaction():
            self._db.execute(
                "INSERT INTO documents VALUES (?,?,?,?,?,?,?,?,?,'indexing',?,?)",
                (info.doc_id, _source_value(info.source), info.title, info.kind, info.num_pages, info.num_chunks,
                 info.num_tokens, info.content_hash, info.added_at, text, json.dumps(sections)))
            ids = []
            for c, search_text in zip(chunks, search_texts, strict=True):
                cur = self._db.execute(
                    "INSERT INTO chunks (doc_id, chunk_index, text, start, end, page, section, num_tokens) "
                    "VALUES (?,?,?,?,?,?,?,?)",
                    (info.doc_id, c.index, c.text, c.start, c.end, c.page, c.section, c.num_tokens))
                ids.append(cur.lastrowid)
                self._db.execute("INSERT INTO chunk_terms (rowid, text) VALUES (?, ?)", (cur.lastrowid, search_text))
            return ids

    def add_vectors(self, doc_id: str, chunk_ids: list[int], vectors: np.ndarray) -> None:
        for start in range(0, len(chunk_ids), 512):
            ids = chunk_ids[start:start + 512]
            self._vectors.add(ids=[str(i) for i in ids], embeddings=vectors[start:start + len(ids)],
                              metadatas=[{"doc_id": doc_id}] * len(ids))

    def finish_document(self, doc_id: str, replaces: str | None = None) -> None:
        """Make the document visible, and drop the version it replaces, in one transaction."""
        with self._lock, self._transaction():
            if self._db.execute("UPDATE documents SET state='ready' WHERE doc_id=? AND state='indexing'",
                                (doc_id,)).rowcount != 1:
                raise LibraryError(f"document {doc_id} vanished while it was being indexed")
            if replaces is not None:
                self._delete_rows(replaces)
        if replaces is not None:
            try:
                self._delete_vectors(replaces)
            except Exception:  # the document is in; the old vectors stay queued and go on the next open
                log.exception("deleting the vectors of replaced document %s failed", replaces)

    def remove(self, doc_id: str) -> None:
        """Catalog first: once its rows are gone the document is gone. Its vectors are noted for
        deletion in the same transaction, so a crash before they are deleted is finished on open."""
        with self._lock, self._transaction():
            if not self._delete_rows(doc_id):
                raise KeyError(doc_id)
        self._delete_vectors(doc_id)

    def abandon(self, doc_id: str) -> None:
        """Undo a document that was begun but not finished (its vectors failed, or an interrupt);
        a document already made visible is left alone."""
        with self._lock, self._transaction():
            unfinished = "SELECT 1 FROM documents WHERE doc_id=? AND state='indexing'"
            if not self._db.execute(unfinished, (doc_id,)).fetchone():
                return
            self._delete_rows(doc_id)
        self._delete_vectors(doc_id)

    # ------------------------------------------------------------------ internals

    def _remove_unfinished(self) -> None:
        with self._lock, self._transaction():
            for (doc_id,) in self._db.execute("SELECT doc_id FROM documents WHERE state='indexing'").fetchall():
                self._delete_rows(doc_id)
        for (doc_id,) in self._query("SELECT doc_id FROM removed_vectors"):
            self._delete_vectors(doc_id)

    def _delete_rows(self, doc_id: str) -> bool:
        """Inside a transaction: the document, its chunks and terms; its vectors are queued."""
        self._db.execute("DELETE FROM chunk_terms WHERE rowid IN (SELECT id FROM chunks WHERE doc_id=?)", (doc_id,))
        self._db.execute("DELETE FROM chunks WHERE doc_id=?", (doc_id,))
        self._db.execute("INSERT OR IGNORE INTO removed_vectors VALUES (?)", (doc_id,))
        return self._db.execute("DELETE FROM documents WHERE doc_id=?", (doc_id,)).rowcount > 0

    def _delete_vectors(self, doc_id: str) -> None:
        self._vectors.delete(where={"doc_id": doc_id})
        with self._lock:
            self._db.execute("DELETE FROM removed_vectors WHERE doc_id=?", (doc_id,))

    def _query(self, sql: str, args=()) -> list[tuple]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    def _transaction(self):
        return _Transaction(self._db)


def _source_value(path: Path) -> str | bytes:
    """How the catalog stores a source path: as text when it is valid Unicode, else as the raw
    bytes the file system uses for it. A file name may hold any bytes, Python decodes the
    undecodable ones to lone surrogates (PEP 383), and SQLite text must be valid UTF-8. A BLOB
    keeps its type in the TEXT column, so it compares equal only to the same bytes and the two
    forms never collide; old catalogs, all text, read as before."""
    text = str(path)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return os.fsencode(path)
    return text


def _source_path(value: str | bytes) -> Path:
    return Path(os.fsdecode(value) if isinstance(value, bytes) else value)


class _Transaction:
    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> None:
        self.db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type, exc, tb) -> None:
        self.db.execute("COMMIT" if exc_type is None else "ROLLBACK")



def _lock_folder(folder: Path):
    """An open lock file holding an exclusive lock on the folder, or LibraryError if another
    process holds it. The lock goes with the process, so a crash never leaves it behind."""
    handle = open(folder / "library.lock", "a+b")
    try:
        if os.name == "nt":
            import msvcrt
            msvcrt.locking(handle.fileno(), msvcrt.LK_NBLCK, 1)
        else:
            import fcntl
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        raise LibraryError(f"the library at {folder} is open in another Folio (the app, or a folio index or "
                           "ask still running); close it and try again") from None
    return handle
