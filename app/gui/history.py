"""Chats and their messages in SQLite, so tabs, answers and half-written answers survive a restart.

WAL mode and one short transaction per write: a message is either saved whole or not at all, and
a streaming answer is rewritten every half second or so (by the chat session), so a kill loses at
most the last moment of the answer in progress. Used from the GUI thread only; every write is a
single small row, well under a millisecond.
"""
from __future__ import annotations

import json
import sqlite3
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from app.gui.messages import IN_PROGRESS, INTERRUPTED, AnswerStats, ChatMessage, SourceRef

DEFAULT_TITLE = "New chat"
# Per-chat document modes: search the library (plus pins), the pins only, or no documents at all.
SEARCH, PINNED, NO_DOCUMENTS = "search", "pinned", "none"
DOC_MODES = (SEARCH, PINNED, NO_DOCUMENTS)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS chats (
    id INTEGER PRIMARY KEY,
    title TEXT NOT NULL,
    position INTEGER NOT NULL,
    is_open INTEGER NOT NULL DEFAULT 1,
    doc_mode TEXT NOT NULL DEFAULT 'search',
    pinned_doc_ids TEXT NOT NULL DEFAULT '[]',
    created_at REAL NOT NULL,
    closed_at REAL
);
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY,
    chat_id INTEGER NOT NULL REFERENCES chats(id) ON DELETE CASCADE,
    role TEXT NOT NULL,
    content TEXT NOT NULL,
    status TEXT NOT NULL,
    sources TEXT NOT NULL DEFAULT '[]',
    stats TEXT,
    error TEXT,
    created_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS messages_chat ON messages(chat_id, id);
CREATE TABLE IF NOT EXISTS state (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


@dataclass
class ChatRecord:
    id: int
    title: str
    doc_mode: str = SEARCH
    pinned_doc_ids: list[str] = field(default_factory=list)


class History:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        self._db.close()

    @contextmanager
    def _transaction(self):
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    # ------------------------------------------------------------------ chats

    def create_chat(self, title: str = DEFAULT_TITLE, doc_mode: str = SEARCH) -> ChatRecord:
        with self._transaction():
            position = self._next_position()
            cur = self._db.execute("INSERT INTO chats (title, position, doc_mode, created_at) VALUES (?,?,?,?)",
                                   (title, position, doc_mode, time.time()))
        return ChatRecord(cur.lastrowid, title, doc_mode)

    def _next_position(self) -> int:
        """After the last open tab."""
        return self._db.execute("SELECT COALESCE(MAX(position), -1) + 1 FROM chats WHERE is_open=1").fetchone()[0]

    def open_chats(self) -> list[ChatRecord]:
        rows = self._db.execute("SELECT id, title, doc_mode, pinned_doc_ids FROM chats WHERE is_open=1 "
                                "ORDER BY position, id").fetchall()
        return [ChatRecord(r[0], r[1], r[2], json.loads(r[3])) for r in rows]

    def chat(self, chat_id: int) -> ChatRecord:
        r = self._db.execute("SELECT id, title, doc_mode, pinned_doc_ids FROM chats WHERE id=?", (chat_id,)).fetchone()
        if r is None:
            raise KeyError(chat_id)
        return ChatRecord(r[0], r[1], r[2], json.loads(r[3]))

    def rename_chat(self, chat_id: int, title: str) -> None:
        self._db.execute("UPDATE chats SET title=? WHERE id=?", (title, chat_id))

    def set_documents(self, chat_id: int, doc_mode: str, pinned_doc_ids: list[str]) -> None:
        self._db.execute("UPDATE chats SET doc_mode=?, pinned_doc_ids=? WHERE id=?",
                         (doc_mode, json.dumps(pinned_doc_ids), chat_id))

    def set_order(self, chat_ids: list[int]) -> None:
        """The open tabs' order, left to right."""
        with self._transaction():
            for position, chat_id in enumerate(chat_ids):
                self._db.execute("UPDATE chats SET position=? WHERE id=?", (position, chat_id))

    def close_chat(self, chat_id: int) -> None:
        """Closed chats stay in the history and can be reopened."""
        self._db.execute("UPDATE chats SET is_open=0, closed_at=? WHERE id=?", (time.time(), chat_id))

    def reopen_last_closed(self) -> ChatRecord | None:
        row = self._db.execute("SELECT id FROM chats WHERE is_open=0 "
                               "ORDER BY closed_at DESC, id DESC LIMIT 1").fetchone()
        if row is None:
            return None
        with self._transaction():
            position = self._next_position()
            self._db.execute("UPDATE chats SET is_open=1, position=?, closed_at=NULL WHERE id=?", (position, row[0]))
        return self.chat(row[0])

    def set_current(self, chat_id: int) -> None:
        self._db.execute("INSERT OR REPLACE INTO state VALUES ('current_chat', ?)", (str(chat_id),))

    def current(self) -> int | None:
        row = self._db.execute("SELECT value FROM state WHERE key='current_chat'").fetchone()
        return int(row[0]) if row else None

    # ------------------------------------------------------------------ messages

    def messages(self, chat_id: int) -> list[ChatMessage]:
        """A chat's messages in order; an answer that was still streaming when Folio stopped comes
        back as "interrupted", with the text saved last."""
        rows = self._db.execute("SELECT id, role, content, status, sources, stats, error FROM messages "
                                "WHERE chat_id=? ORDER BY id", (chat_id,)).fetchall()
        out = []
        for r in rows:
            stats = json.loads(r[5]) if r[5] else None
            out.append(ChatMessage(
                role=r[1], content=r[2], status=INTERRUPTED if r[3] in IN_PROGRESS else r[3], id=r[0],
                sources=[SourceRef.from_dict(s) for s in json.loads(r[4])],
                stats=AnswerStats.from_dict(stats) if stats else None, error=r[6]))
        return out

    def add_message(self, chat_id: int, message: ChatMessage) -> int:
        cur = self._db.execute(
            "INSERT INTO messages (chat_id, role, content, status, sources, stats, error, created_at) "
            "VALUES (?,?,?,?,?,?,?,?)",
            (chat_id, message.role, message.content, message.status, json.dumps(message.sources_json()),
             _json_or_none(message.stats_json()), message.error, time.time()))
        message.id = cur.lastrowid
        return cur.lastrowid

    def save_message(self, message: ChatMessage) -> None:
        """Rewrite a saved message (a streaming answer's text so far, or its final state)."""
        if message.id is None:
            raise ValueError("the message was never added")
        self._db.execute("UPDATE messages SET content=?, status=?, sources=?, stats=?, error=? WHERE id=?",
                         (message.content, message.status, json.dumps(message.sources_json()),
                          _json_or_none(message.stats_json()), message.error, message.id))

    def delete_messages_from(self, chat_id: int, message_id: int) -> None:
        """Drop a message and everything after it (regenerate, edit and resend)."""
        self._db.execute("DELETE FROM messages WHERE chat_id=? AND id>=?", (chat_id, message_id))


def _json_or_none(value) -> str | None:
    return None if value is None else json.dumps(value)
