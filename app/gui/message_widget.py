"""One message on screen: its Markdown, its status or stats line, its sources and its buttons.

A streaming answer re-renders only itself, at most every RENDER_DELAY_MS, however fast the
deltas come: a burst of tokens costs one layout, and the rest of the chat is never touched.
"""
from __future__ import annotations

from html import escape

from PySide6.QtCore import Qt, QTimer, Signal
from PySide6.QtWidgets import QFrame, QHBoxLayout, QLabel, QSizePolicy, QToolButton, QVBoxLayout, QWidget

from app.gui.markdown_view import MarkdownView
from app.gui.messages import DONE, ERROR, INTERRUPTED, PENDING, STOPPED, STREAMING, ChatMessage
from app.gui.theme import colors, icon

RENDER_DELAY_MS = 50
SOURCES_SHOWN = 3        # before "show more", when the answer cited none
SNIPPET_CHARS = 90


class MessageWidget(QFrame):
    copyRequested = Signal(object)     # ChatMessage
    regenerateRequested = Signal()
    editRequested = Signal(object)     # ChatMessage
    sourceActivated = Signal(object)   # SourceRef

    def __init__(self, message: ChatMessage, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.message = message
        self.is_last = False
        self._all_sources = False
        self.setObjectName("message")
        self.setProperty("role", message.role)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Maximum)

        self.who = QLabel("You" if message.role == "user" else "Folio")
        self.who.setObjectName("messageAuthor")
        self.body = MarkdownView()
        self.status = QLabel()
        self.status.setObjectName("messageStatus")
        self.status.setWordWrap(True)
        self.error = QLabel()
        self.error.setObjectName("messageError")
        self.error.setWordWrap(True)
        self.error.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.sources = QLabel()
        self.sources.setObjectName("messageSources")
        self.sources.setWordWrap(True)
        self.sources.setTextFormat(Qt.TextFormat.RichText)
        self.sources.setTextInteractionFlags(Qt.TextInteractionFlag.LinksAccessibleByMouse
                                             | Qt.TextInteractionFlag.LinksAccessibleByKeyboard)
        self.sources.setFocusPolicy(Qt.FocusPolicy.TabFocus)
        self.sources.linkActivated.connect(self._on_source_link)

        self.copy_button = self._tool_button("copy", "Copy this message")
        self.copy_button.clicked.connect(lambda: self.copyRequested.emit(self.message))
        self.regenerate_button = self._tool_button("regenerate", "Write this answer again (Ctrl+R)")
        self.regenerate_button.clicked.connect(self.regenerateRequested)
        self.edit_button = self._tool_button("edit", "Edit this question and ask it again")
        self.edit_button.clicked.connect(lambda: self.editRequested.emit(self.message))
        actions = QHBoxLayout()
        actions.setContentsMargins(0, 0, 0, 0)
        actions.setSpacing(2)
        for button in (self.copy_button, self.edit_button, self.regenerate_button):
            actions.addWidget(button)
        actions.addStretch(1)

        layout = QVBoxLayout(self)
        layout.setContentsMargins(12, 8, 12, 6)
        layout.setSpacing(4)
        for widget in (self.who, self.body, self.status, self.error, self.sources):
            layout.addWidget(widget)
        layout.addLayout(actions)

        self._render_timer = QTimer(self)
        self._render_timer.setSingleShot(True)
        self._render_timer.setInterval(RENDER_DELAY_MS)
        self._render_timer.timeout.connect(self._render_text)
        self.refresh()

    def _tool_button(self, icon_name: str, tip: str) -> QToolButton:
        button = QToolButton()
        button.setIcon(icon(icon_name))
        button.setToolTip(tip)
        button.setAccessibleName(tip)
        button.setAutoRaise(True)
        button.setFocusPolicy(Qt.FocusPolicy.TabFocus)
        return button

    # ------------------------------------------------------------------ updates from the model

    def refresh(self) -> None:
        """Redraw everything from the message (a status change, the end of an answer)."""
        self._render_timer.stop()
        self._render_text()
        m = self.message
        self.status.setText(_status_text(m))
        self.status.setVisible(bool(self.status.text()))
        self.error.setText(m.error or "")
        self.error.setVisible(bool(m.error))
        self._render_sources()
        self._update_buttons()

    def append(self, delta: str) -> None:
        """The message's text grew: redraw it soon, once for the whole burst."""
        if not self._render_timer.isActive():
            self._render_timer.start()

    def set_last(self, is_last: bool) -> None:
        self.is_last = is_last
        self._update_buttons()

    def _render_text(self) -> None:
        text = self.message.content
        if self.message.role == "user":
            self.body.set_plain(text)  # what the user typed, exactly
        else:
            self.body.set_markdown(text if text or not self.message.in_progress else "…")
        self.body.setVisible(bool(text) or self.message.in_progress)

    def _update_buttons(self) -> None:
        m = self.message
        idle = not m.in_progress
        self.copy_button.setVisible(bool(m.content) and idle)
        self.edit_button.setVisible(m.role == "user")
        self.regenerate_button.setVisible(m.role == "assistant" and self.is_last and idle)

    # ------------------------------------------------------------------ sources

    def _render_sources(self) -> None:
        sources = self.message.sources
        if not sources or self.message.in_progress:
            self.sources.hide()
            return
        cited = [s for s in sources if s.cited]
        shown = sources if self._all_sources else (cited or sources[:SOURCES_SHOWN])
        muted = colors().muted
        heading = "Sources cited" if cited else "Sources given to the model"
        lines = [f"<b>{heading}</b>"]
        for s in shown:
            snippet = s.snippet if len(s.snippet) <= SNIPPET_CHARS else s.snippet[:SNIPPET_CHARS - 1].rstrip() + "…"
            lines.append(f'<a href="source:{sources.index(s)}">{escape(s.label)}</a>'
                         f' <span style="color:{muted}">— {escape(snippet)}</span>')
        hidden = len(sources) - len(shown)
        if hidden > 0:
            lines.append(f'<a href="more">Show {hidden} more</a>')
        elif self._all_sources and (cited or len(sources) > SOURCES_SHOWN):
            lines.append('<a href="less">Show fewer</a>')
        self.sources.setText("<br>".join(lines))
        self.sources.show()

    def _on_source_link(self, link: str) -> None:
        if link in ("more", "less"):
            self._all_sources = link == "more"
            self._render_sources()
        elif link.startswith("source:"):
            self.sourceActivated.emit(self.message.sources[int(link.split(":", 1)[1])])


def _status_text(m: ChatMessage) -> str:
    if m.role != "assistant":
        return ""
    stats = m.stats.summary() if m.stats else ""
    if m.status == PENDING:
        return m.waiting_for or "Waiting…"
    if m.status == STREAMING:
        return "Writing…"
    if m.status == STOPPED:
        return "Stopped" + (f" · {stats}" if stats else "")
    if m.status == INTERRUPTED:
        return "Interrupted: Folio closed while this answer was being written"
    if m.status in (DONE, ERROR):
        return stats
    return ""
