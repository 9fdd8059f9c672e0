"""A read-only Markdown view that is exactly as tall as its text, for one chat message.

Qt's own Markdown importer (md4c, GitHub dialect) does the parsing; code blocks and inline code
then get a monospace font and a tinted background. Streaming calls `set_markdown` again for this
one message only (coalesced by the caller), never for the rest of the chat.

Two departures from Markdown, for chat: a single line break stays a line break (poems,
addresses, steps written one a line), and a line starting with "#" stays a line of text, because
in answers it is mostly a document's own heading quoted back, not a heading of the answer.
"""
from __future__ import annotations

import re

from PySide6.QtCore import QSize, Qt
from PySide6.QtGui import (QColor, QFontDatabase, QTextBlockFormat, QTextCharFormat, QTextCursor, QTextDocument,
                           QTextFormat)
from PySide6.QtWidgets import QFrame, QSizePolicy, QTextBrowser

from app.gui.theme import colors


class MarkdownView(QTextBrowser):
    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self.setFrameShape(QFrame.Shape.NoFrame)
        self.setVerticalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self.setOpenExternalLinks(True)
        self.setTextInteractionFlags(Qt.TextInteractionFlag.TextBrowserInteraction
                                     | Qt.TextInteractionFlag.TextSelectableByKeyboard)
        self.setFocusPolicy(Qt.FocusPolicy.ClickFocus)  # Tab moves between messages' buttons, not into every text
        self.viewport().setAutoFillBackground(False)
        self.document().setDocumentMargin(2)
        self.document().documentLayout().documentSizeChanged.connect(self._fit_height)

    def set_markdown(self, text: str) -> None:
        doc = self.document()
        doc.setMarkdown(chat_markdown(text), QTextDocument.MarkdownFeature.MarkdownDialectGitHub)
        _style_code(doc)
        self._fit_height()

    def set_plain(self, text: str) -> None:
        self.setPlainText(text)
        self._fit_height()

    def resizeEvent(self, event) -> None:
        super().resizeEvent(event)
        self._fit_height()

    def _fit_height(self, *_) -> None:
        doc = self.document()
        doc.setTextWidth(self.viewport().width())
        height = int(doc.size().height()) + 2 * self.frameWidth()
        if height != self.height():
            self.setFixedHeight(height)

    def sizeHint(self) -> QSize:
        return QSize(super().sizeHint().width(), self.height())


_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
_HEADING = re.compile(r"^( {0,3})(#{1,6})(?=\s|$)")


def chat_markdown(text: str) -> str:
    """Markdown as a chat means it: outside code fences, every line that a non-blank line follows
    ends in a hard break (two spaces, which Markdown drops at a block's end), and "#" at the start
    of a line is escaped."""
    lines = text.split("\n")
    out, fence = [], None
    for i, line in enumerate(lines):
        opener = _FENCE.match(line)
        if fence is not None:
            if opener and opener.group(1)[0] == fence[0] and len(opener.group(1)) >= len(fence):
                fence = None
            out.append(line)
            continue
        if opener:
            fence = opener.group(1)
            out.append(line)
            continue
        line = _HEADING.sub(lambda m: m.group(1) + "\\" + m.group(2), line)
        following = lines[i + 1] if i + 1 < len(lines) else ""
        out.append(line + "  " if line.strip() and following.strip() else line)
    return "\n".join(out)


def _style_code(doc: QTextDocument) -> None:
    mono = QFontDatabase.systemFont(QFontDatabase.SystemFont.FixedFont)
    background = QColor(colors().code_background)
    block_format = QTextBlockFormat()
    block_format.setBackground(background)
    block_format.setLeftMargin(6)
    block_format.setRightMargin(6)
    code_chars = QTextCharFormat()
    code_chars.setFontFamilies(mono.families())
    inline = QTextCharFormat()
    inline.setBackground(background)
    inline.setFontFamilies(mono.families())
    block = doc.begin()
    while block.isValid():
        fmt = block.blockFormat()
        cursor = QTextCursor(block)
        code = QTextFormat.Property.BlockCodeFence, QTextFormat.Property.BlockCodeLanguage
        if any(fmt.hasProperty(p) for p in code):
            cursor.mergeBlockFormat(block_format)
            cursor.movePosition(QTextCursor.MoveOperation.EndOfBlock, QTextCursor.MoveMode.KeepAnchor)
            cursor.mergeCharFormat(code_chars)
        else:
            spans = [(it.fragment().position(), it.fragment().length()) for it in block
                     if it.fragment().charFormat().fontFixedPitch()]
            for position, length in spans:
                cursor.setPosition(position)
                cursor.setPosition(position + length, QTextCursor.MoveMode.KeepAnchor)
                cursor.mergeCharFormat(inline)
        block = block.next()
