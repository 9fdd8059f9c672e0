"""Light and dark looks: a Fusion palette, a `.qss` file from resources/, and SVG icons drawn in
the palette's text colour at whatever size and device-pixel ratio the screen asks for."""
from __future__ import annotations

import functools
from dataclasses import dataclass
from importlib import resources

from PySide6.QtCore import QByteArray, QPoint, QRect, QRectF, QSize, Qt
from PySide6.QtGui import QColor, QIcon, QIconEngine, QPainter, QPalette, QPixmap
from PySide6.QtSvg import QSvgRenderer
from PySide6.QtWidgets import QApplication


@dataclass(frozen=True)
class Colors:
    """The few colours drawn by hand (the KV picture, message bubbles, code blocks)."""

    window: str
    base: str
    text: str
    muted: str
    accent: str
    user_bubble: str
    code_background: str
    error: str
    kv_used: str
    kv_shared: str
    kv_cached: str
    kv_free: str


LIGHT = Colors(window="#f4f5f7", base="#ffffff", text="#1d2026", muted="#5f6672", accent="#2f6fde",
               user_bubble="#e6eefc", code_background="#eef0f3", error="#b3261e",
               kv_used="#2f6fde", kv_shared="#14a37f", kv_cached="#e0a526", kv_free="#d5d9e0")
DARK = Colors(window="#1e2127", base="#262a31", text="#e3e6eb", muted="#a0a7b3", accent="#7aa7ff",
              user_bubble="#2e3a52", code_background="#181b20", error="#ff8a80",
              kv_used="#5b8def", kv_shared="#2fc79b", kv_cached="#e6b84a", kv_free="#444a55")
THEMES = {"light": LIGHT, "dark": DARK}

_current = LIGHT


def colors() -> Colors:
    return _current


def apply_theme(app: QApplication, name: str) -> None:
    global _current
    _current = THEMES[name]
    c = _current
    app.setStyle("Fusion")
    palette = QPalette()
    roles = {
        QPalette.ColorRole.Window: c.window, QPalette.ColorRole.WindowText: c.text,
        QPalette.ColorRole.Base: c.base, QPalette.ColorRole.AlternateBase: c.window,
        QPalette.ColorRole.Text: c.text, QPalette.ColorRole.Button: c.window,
        QPalette.ColorRole.ButtonText: c.text, QPalette.ColorRole.ToolTipBase: c.base,
        QPalette.ColorRole.ToolTipText: c.text, QPalette.ColorRole.Highlight: c.accent,
        QPalette.ColorRole.HighlightedText: "#ffffff", QPalette.ColorRole.Link: c.accent,
        QPalette.ColorRole.PlaceholderText: c.muted,
        # Fusion draws bevels and frames with these; left alone they stay light in the dark theme
        QPalette.ColorRole.Light: c.base, QPalette.ColorRole.Midlight: c.base,
        QPalette.ColorRole.Mid: c.muted, QPalette.ColorRole.Dark: c.window, QPalette.ColorRole.Shadow: c.window,
    }
    for role, colour in roles.items():
        palette.setColor(role, QColor(colour))
    for role in (QPalette.ColorRole.Text, QPalette.ColorRole.WindowText, QPalette.ColorRole.ButtonText):
        palette.setColor(QPalette.ColorGroup.Disabled, role, QColor(c.muted))
    app.setPalette(palette)
    app.setStyleSheet(resources.files("resources").joinpath(f"{name}.qss").read_text(encoding="utf-8"))


class _SvgIconEngine(QIconEngine):
    """Renders the SVG at the exact pixel size asked for: crisp at any scale factor."""

    def __init__(self, svg: bytes) -> None:
        super().__init__()
        self._svg = svg

    def paint(self, painter: QPainter, rect: QRect, mode: QIcon.Mode, state: QIcon.State) -> None:
        colour = colors().muted if mode == QIcon.Mode.Disabled else colors().text
        QSvgRenderer(QByteArray(self._svg.replace(b"currentColor", colour.encode()))).render(painter, QRectF(rect))

    def pixmap(self, size: QSize, mode: QIcon.Mode, state: QIcon.State) -> QPixmap:
        return self.scaledPixmap(size, mode, state, 1.0)

    def scaledPixmap(self, size: QSize, mode: QIcon.Mode, state: QIcon.State, scale: float) -> QPixmap:
        pixmap = QPixmap(size * scale)
        pixmap.setDevicePixelRatio(scale)
        pixmap.fill(Qt.GlobalColor.transparent)
        painter = QPainter(pixmap)
        self.paint(painter, QRect(QPoint(0, 0), size), mode, state)
        painter.end()
        return pixmap

    def clone(self) -> QIconEngine:
        return _SvgIconEngine(self._svg)


def icon(name: str) -> QIcon:
    return QIcon(_SvgIconEngine(_svg(name)))


@functools.cache
def _svg(name: str) -> bytes:
    """Read once: icons are made on every tab, row and message."""
    return resources.files("resources").joinpath("icons", f"{name}.svg").read_bytes()
