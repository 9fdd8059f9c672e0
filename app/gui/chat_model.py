"""A chat's messages, and signals that tell a view exactly what changed.

The model never renders: a view listens and updates only the message that changed. `appended`
carries just the streamed delta, so a view can grow the last answer without touching the rest.
"""
from __future__ import annotations

from PySide6.QtCore import QObject, Signal

from app.gui.messages import ChatMessage


class ChatModel(QObject):
    reset = Signal()              # everything replaced (a chat loaded from the history)
    inserted = Signal(int)        # a message added at this index
    changed = Signal(int)         # this message changed in any other way (status, stats, sources, text)
    appended = Signal(int, str)   # this message's text grew by this delta
    truncated = Signal(int)       # messages from this index on were removed

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.messages: list[ChatMessage] = []

    def __len__(self) -> int:
        return len(self.messages)

    def __getitem__(self, index: int) -> ChatMessage:
        return self.messages[index]

    def load(self, messages: list[ChatMessage]) -> None:
        self.messages = list(messages)
        self.reset.emit()

    def add(self, message: ChatMessage) -> int:
        self.messages.append(message)
        index = len(self.messages) - 1
        self.inserted.emit(index)
        return index

    def append_text(self, index: int, delta: str) -> None:
        self.messages[index].content += delta
        self.appended.emit(index, delta)

    def touch(self, index: int) -> None:
        """Say that a message was edited in place."""
        self.changed.emit(index)

    def truncate(self, index: int) -> None:
        del self.messages[index:]
        self.truncated.emit(index)

    def index_of(self, message: ChatMessage) -> int:
        return next(i for i, m in enumerate(self.messages) if m is message)
