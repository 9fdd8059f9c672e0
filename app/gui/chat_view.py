"""A chat tab: the messages, the document choice, and the box to type in.

The view draws what its session's `ChatModel` says changed: a new message adds one widget, a
streamed delta touches only the last one, a truncation removes widgets from the end. It never
rebuilds the chat except when the whole model is reset.
"""
from __future__ import annotations

from PySide6.QtCore import QMimeData, Qt, Signal
from PySide6.QtGui import QGuiApplication, QKeySequence, QShortcut
from PySide6.QtWidgets import (QComboBox, QHBoxLayout, QLabel, QMenu, QPlainTextEdit, QPushButton, QScrollArea,
                               QSizePolicy, QToolButton, QVBoxLayout, QWidget)

from app.gui.chat_session import ChatSession
from app.gui.file_drops import FileDropTarget, local_files
from app.gui.history import NO_DOCUMENTS, PINNED, SEARCH
from app.gui.library_service import LibraryService
from app.gui.message_widget import MessageWidget
from app.gui.messages import ChatMessage, SourceRef
from app.gui.source_dialog import SourceDialog
from app.gui.theme import icon

COMPOSER_MIN_LINES, COMPOSER_MAX_LINES = 2, 8


class Composer(FileDropTarget, QPlainTextEdit):
    """Enter sends, Shift+Enter starts a new line, Tab moves focus on. Dropped files go to the
    library rather than into the text."""

    submitted = Signal(str)
    filesDropped = Signal(object)  # list[Path]

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("composer")
        self.setTabChangesFocus(True)
        self.setPlaceholderText("Ask anything. Enter sends, Shift+Enter adds a line; drop files to pin them.")
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self.document().contentsChanged.connect(self._fit_height)
        self._fit_height()

    def keyPressEvent(self, event) -> None:
        plain_enter = event.key() in (Qt.Key.Key_Return, Qt.Key.Key_Enter) and not (
            event.modifiers() & (Qt.KeyboardModifier.ShiftModifier | Qt.KeyboardModifier.AltModifier))
        if plain_enter:
            self.submitted.emit(self.toPlainText())
            return
        super().keyPressEvent(event)

    def _fit_height(self) -> None:
        lines = min(max(self.document().lineCount(), COMPOSER_MIN_LINES), COMPOSER_MAX_LINES)
        margins = self.contentsMargins()
        height = (lines * self.fontMetrics().lineSpacing() + 2 * int(self.document().documentMargin())
                  + margins.top() + margins.bottom())
        self.setFixedHeight(height)

    def canInsertFromMimeData(self, source: QMimeData) -> bool:
        return not local_files(source) and super().canInsertFromMimeData(source)



class DocumentBar(QWidget):
    """Per chat: search the whole library (plus pins), use the pinned documents only, or no
    documents; and a notice when a pinned document was too long to read whole."""

    def __init__(self, session: ChatSession, library: LibraryService, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("documentBar")
        self.session, self.library = session, library
        self.mode = QComboBox()
        self.mode.addItem("Search my library", SEARCH)
        self.mode.addItem("Pinned documents only", PINNED)
        self.mode.addItem("No documents", NO_DOCUMENTS)
        self.mode.setToolTip("Where answers look for facts in this chat")
        self.mode.setAccessibleName("Documents for this chat")
        self.mode.currentIndexChanged.connect(lambda: self.session.set_doc_mode(self.mode.currentData()))
        self.pins = QLabel()
        self.pins.setObjectName("pinnedLabel")
        self.pins.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
        self.pin_button = QToolButton()
        self.pin_button.setObjectName("pinButton")
        self.pin_button.setText("Pin…")
        self.pin_button.setIcon(icon("pin"))
        self.pin_button.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
        self.pin_button.setToolTip("Choose documents this chat always reads whole")
        self.pin_button.setPopupMode(QToolButton.ToolButtonPopupMode.InstantPopup)
        self.pin_menu = QMenu(self.pin_button)
        self.pin_menu.aboutToShow.connect(self._fill_menu)
        self.pin_button.setMenu(self.pin_menu)
        self.notice = QLabel()
        self.notice.setObjectName("pinNotice")
        self.notice.setWordWrap(True)
        self.notice.hide()
        label = QLabel("&Documents:")
        label.setBuddy(self.mode)
        row = QHBoxLayout()
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(label)
        row.addWidget(self.mode)
        row.addWidget(self.pin_button)
        row.addWidget(self.pins, 1)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(8, 4, 8, 4)
        layout.setSpacing(2)
        layout.addLayout(row)
        layout.addWidget(self.notice)
        session.documentsChanged.connect(self.refresh)
        library.documentsChanged.connect(self.refresh)
        library.openFailed.connect(self.refresh)
        self.refresh()

    def refresh(self) -> None:
        self.mode.blockSignals(True)
        self.mode.setCurrentIndex(self.mode.findData(self.session.doc_mode))
        self.mode.blockSignals(False)
        names = {d.doc_id: d.source.name for d in self.library.documents}
        if self.library.listed:
            missing = "(removed from the library)"
        elif self.library.failed:
            missing = "(the library cannot be opened)"
        else:
            missing = "(loading)"
        pinned = [names.get(d, missing) for d in self.session.pinned_doc_ids]
        mode = self.session.doc_mode
        if mode == NO_DOCUMENTS:
            text = "A plain chat" + (f" (pins kept for later: {', '.join(pinned)})" if pinned else "")
        elif pinned:
            text = "Pinned: " + ", ".join(pinned)
        elif mode == PINNED:
            text = "No documents pinned: a plain chat"
        else:
            text = ""
        self.pins.setText(text)
        self.pins.setToolTip("\n".join(pinned))
        searched = [p for p in self.session.searched_pins if p.doc_id in self.session.pinned_doc_ids]
        self.notice.setText(" ".join(
            f"{p.source.name} is too long to read whole (about {p.num_tokens:,} tokens; the model's context leaves "
            f"room for about {p.room_tokens:,} for pinned documents), so each question searches it instead."
            for p in searched))
        self.notice.setVisible(bool(searched) and mode != NO_DOCUMENTS)

    def _fill_menu(self) -> None:
        self.pin_menu.clear()
        if not self.library.documents:
            self.pin_menu.addAction("The library is empty: drop files on the window").setEnabled(False)
        for doc in self.library.documents:
            action = self.pin_menu.addAction(doc.source.name)
            action.setCheckable(True)
            action.setChecked(doc.doc_id in self.session.pinned_doc_ids)
            action.toggled.connect(lambda on, d=doc.doc_id: self.session.pin([d]) if on else self.session.unpin(d))


class ChatView(FileDropTarget, QWidget):
    filesDropped = Signal(object)  # list[Path], to index and pin into this chat

    def __init__(self, session: ChatSession, library: LibraryService, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("chatView")
        self.setAcceptDrops(True)
        self.session, self.library = session, library
        self.widgets: list[MessageWidget] = []
        self.editing: ChatMessage | None = None
        self._stick_to_bottom = True

        self.documents = DocumentBar(session, library)
        self.list_widget = QWidget()
        self.list_widget.setObjectName("messageList")
        self.list_layout = QVBoxLayout(self.list_widget)
        self.list_layout.setContentsMargins(12, 12, 12, 12)
        self.list_layout.setSpacing(10)
        self.empty_hint = QLabel("Ask anything below. Drop files on this chat to pin them: the answers will "
                                 "read them whole and cite their pages.")
        self.empty_hint.setObjectName("emptyHint")
        self.empty_hint.setWordWrap(True)
        self.empty_hint.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.list_layout.addWidget(self.empty_hint)
        self.list_layout.addStretch(1)
        self.scroll = QScrollArea()
        self.scroll.setObjectName("messageScroll")
        self.scroll.setWidgetResizable(True)
        self.scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.scroll.setWidget(self.list_widget)
        self.scroll.setFocusPolicy(Qt.FocusPolicy.NoFocus)
        bar = self.scroll.verticalScrollBar()
        bar.valueChanged.connect(lambda v: setattr(self, "_stick_to_bottom", v >= bar.maximum() - 4))
        bar.rangeChanged.connect(lambda _lo, hi: bar.setValue(hi) if self._stick_to_bottom else None)

        self.edit_banner = QLabel("Editing a question: Enter asks it again (the answers after it are dropped), "
                                  "Esc cancels.")
        self.edit_banner.setObjectName("editBanner")
        self.edit_banner.setWordWrap(True)
        self.edit_banner.hide()
        self.composer = Composer()
        self.composer.submitted.connect(self.submit)
        self.composer.filesDropped.connect(self.filesDropped)
        self.send_button = QPushButton()
        self.send_button.setObjectName("sendButton")
        self.send_button.clicked.connect(self._send_or_stop)
        composer_row = QHBoxLayout()
        composer_row.setContentsMargins(12, 4, 12, 12)
        composer_row.addWidget(self.composer, 1)
        composer_row.addWidget(self.send_button, 0, Qt.AlignmentFlag.AlignBottom)

        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(0)
        layout.addWidget(self.documents)
        layout.addWidget(self.scroll, 1)
        layout.addWidget(self.edit_banner)
        layout.addLayout(composer_row)
        self.setFocusProxy(self.composer)

        for key, slot in ((Qt.Key.Key_Escape, self.escape), (QKeySequence("Ctrl+R"), self.session.regenerate)):
            shortcut = QShortcut(QKeySequence(key), self)
            shortcut.setContext(Qt.ShortcutContext.WidgetWithChildrenShortcut)
            shortcut.activated.connect(slot)

        model = session.model
        model.reset.connect(self._rebuild)
        model.inserted.connect(self._insert)
        model.changed.connect(self._changed)  # bound methods: disconnected when the view goes
        model.appended.connect(self._appended)
        model.truncated.connect(self._truncate)
        session.busyChanged.connect(self._update_send_button)
        self._rebuild()
        self._update_send_button()

    # ------------------------------------------------------------------ actions

    def submit(self, text: str | None = None) -> bool:
        text = self.composer.toPlainText() if text is None else text
        if self.editing is not None:
            ok = self.session.edit_and_resend(self.session.model.index_of(self.editing), text)
        else:
            ok = self.session.send(text)
        if ok:
            self.composer.clear()
            self._end_edit()
            self._stick_to_bottom = True
        return ok

    def escape(self) -> None:
        if self.session.busy:
            self.session.stop()
        elif self.editing is not None:
            self._end_edit()
            self.composer.clear()

    def _send_or_stop(self) -> None:
        if self.session.busy:
            self.session.stop()
        else:
            self.submit()

    def _update_send_button(self, *_) -> None:
        busy = self.session.busy
        self.send_button.setText("Stop" if busy else "Send")
        self.send_button.setIcon(icon("stop" if busy else "send"))
        self.send_button.setToolTip("Stop the answer (Esc)" if busy else "Send (Enter)")

    def _edit(self, message: ChatMessage) -> None:
        if self.session.busy:
            return
        self.editing = message
        self.composer.setPlainText(message.content)
        self.composer.moveCursor(self.composer.textCursor().MoveOperation.End)
        self.edit_banner.show()
        self.composer.setFocus()

    def _end_edit(self) -> None:
        self.editing = None
        self.edit_banner.hide()

    def _open_source(self, source: SourceRef) -> SourceDialog:
        dialog = SourceDialog(source, self.library, self)
        dialog.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        dialog.open()
        return dialog

    # ------------------------------------------------------------------ model -> widgets

    def _rebuild(self) -> None:
        self._truncate(0)
        for i in range(len(self.session.model)):
            self._add_widget(i)
        self._mark_last()

    def _insert(self, index: int) -> None:
        self._add_widget(index)
        self._mark_last()

    def _add_widget(self, index: int) -> None:
        widget = MessageWidget(self.session.model[index])
        widget.copyRequested.connect(lambda m: QGuiApplication.clipboard().setText(m.content))
        widget.editRequested.connect(self._edit)
        widget.regenerateRequested.connect(self.session.regenerate)
        widget.sourceActivated.connect(self._open_source)
        self.list_layout.insertWidget(index, widget)  # before the hint and the trailing stretch
        self.widgets.insert(index, widget)

    def _changed(self, index: int) -> None:
        self.widgets[index].refresh()

    def _appended(self, index: int, delta: str) -> None:
        self.widgets[index].append(delta)

    def _truncate(self, index: int) -> None:
        for w in self.widgets[index:]:
            self.list_layout.removeWidget(w)
            w.hide()
            w.deleteLater()
        del self.widgets[index:]
        self._mark_last()

    def _mark_last(self) -> None:
        for i, w in enumerate(self.widgets):
            w.set_last(i == len(self.widgets) - 1)
        self.empty_hint.setVisible(not self.widgets)
