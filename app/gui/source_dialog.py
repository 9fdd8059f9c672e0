"""The passage behind a citation: the text the model saw, and a button to open the file itself."""
from __future__ import annotations

from pathlib import Path

import shiboken6
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QDialog, QDialogButtonBox, QLabel, QPlainTextEdit, QVBoxLayout, QWidget

from app.gui.file_launch import open_file, tell_cannot_open
from app.gui.library_service import LibraryService
from app.gui.messages import SourceRef
from app.gui.theme import icon


class SourceDialog(QDialog):
    def __init__(self, source: SourceRef, library: LibraryService, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        self.source = source
        self.setWindowTitle(source.label)
        self.resize(640, 480)
        where = f"page {source.page} of " if source.page is not None else ""
        kind = "whole document, pinned" if source.pinned else "passage found by search"
        title = QLabel(f"<b>[{source.number}]</b> {where}<b>{source.name}</b> ({kind})<br>"
                       f"<span>{source.path}</span>")
        title.setWordWrap(True)
        self.text = QPlainTextEdit(source.snippet)
        self.text.setReadOnly(True)
        self.text.setObjectName("passage")
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Close)
        self.open_button = buttons.addButton("Open file", QDialogButtonBox.ButtonRole.ActionRole)
        self.open_button.setIcon(icon("open-external"))
        self.open_button.setEnabled(Path(source.path).exists())
        self.open_button.clicked.connect(self.open_file)
        buttons.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        layout.addWidget(title)
        layout.addWidget(self.text, 1)
        layout.addWidget(buttons)
        if source.end > source.start:
            library.passage(source.doc_id, source.start, source.end, self._show_passage)

    def _show_passage(self, text: str | None) -> None:
        if not shiboken6.isValid(self):  # closed before the text arrived
            return
        if text:
            self.text.setPlainText(text)
        else:
            self.text.setPlainText(self.source.snippet + "\n\n(This document is no longer in the library.)")

    def open_file(self) -> bool:
        """Open the file itself; says so when nothing can."""
        if open_file(self.source.path):
            return True
        tell_cannot_open(self, [self.source.path])
        return False
