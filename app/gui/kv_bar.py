"""A picture of the engine's KV memory: blocks shared by several chats, used by one, cached for
reuse, and free, as one bar with a legend, redrawn whenever the engine's stats change."""
from __future__ import annotations

from dataclasses import dataclass

from PySide6.QtCore import QRectF, QSize, Qt
from PySide6.QtGui import QColor, QPainter, QPainterPath
from PySide6.QtWidgets import QHBoxLayout, QLabel, QSizePolicy, QWidget

from app.gui.theme import colors

MIN_SEGMENT = 3.0  # logical pixels: a non-empty kind never vanishes from the picture


@dataclass(frozen=True)
class KvBlocks:
    """Disjoint counts that add up to the total (the engine's `blocks_free` counts cached
    blocks as free, and `blocks_used` counts shared ones as used)."""

    shared: int = 0
    used: int = 0      # used by exactly one request
    cached: int = 0    # no request, but kept for a prefix hit
    free: int = 0
    block_size: int = 16

    @classmethod
    def from_stats(cls, stats: dict) -> KvBlocks:
        total, used = int(stats.get("blocks_total", 0)), int(stats.get("blocks_used", 0))
        shared, cached = int(stats.get("blocks_shared", 0)), int(stats.get("blocks_cached", 0))
        return cls(shared, used - shared, cached, max(total - used - cached, 0), int(stats.get("block_size", 16)))

    @property
    def total(self) -> int:
        return self.shared + self.used + self.cached + self.free

    def parts(self) -> list[tuple[str, int, str]]:
        c = colors()
        return [("shared", self.shared, c.kv_shared), ("used", self.used, c.kv_used),
                ("cached", self.cached, c.kv_cached), ("free", self.free, c.kv_free)]


class KvBar(QWidget):
    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.blocks = KvBlocks()
        self.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Fixed)
        self.setAccessibleName("KV memory")

    def sizeHint(self) -> QSize:
        return QSize(self.fontMetrics().averageCharWidth() * 36, max(8, self.fontMetrics().height() * 2 // 3))

    def set_blocks(self, blocks: KvBlocks) -> None:
        self.blocks = blocks
        self.update()

    def segments(self) -> list[tuple[str, float, float]]:
        """(kind, x, width) in logical pixels: proportional, but at least MIN_SEGMENT wide when
        non-empty; the free part absorbs the difference."""
        width = float(self.width())
        total = self.blocks.total
        if total == 0:
            return [("free", 0.0, width)]
        widths = {kind: (max(MIN_SEGMENT, width * n / total) if n else 0.0) for kind, n, _ in self.blocks.parts()}
        widths["free"] = max(0.0, width - sum(w for k, w in widths.items() if k != "free"))
        out, x = [], 0.0
        for kind, _, _ in self.blocks.parts():
            if widths[kind] > 0:
                out.append((kind, x, widths[kind]))
                x += widths[kind]
        return out

    def paintEvent(self, event) -> None:
        painter = QPainter(self)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        rect = QRectF(self.rect())
        clip = QPainterPath()
        clip.addRoundedRect(rect, rect.height() / 3, rect.height() / 3)
        painter.setClipPath(clip)
        colour = {kind: c for kind, _, c in self.blocks.parts()}
        for kind, x, w in self.segments():
            painter.fillRect(QRectF(x, 0, w, rect.height()), QColor(colour[kind]))
        painter.end()


class KvIndicator(QWidget):
    """The bar and its legend, for the status bar."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.bar = KvBar()
        self.legend = QLabel()
        self.legend.setObjectName("kvLegend")
        self.legend.setTextFormat(Qt.TextFormat.RichText)
        title = QLabel("KV")
        title.setObjectName("kvTitle")
        layout = QHBoxLayout(self)
        layout.setContentsMargins(4, 0, 4, 0)
        layout.setSpacing(6)
        layout.addWidget(title)
        layout.addWidget(self.bar, 0, Qt.AlignmentFlag.AlignVCenter)
        layout.addWidget(self.legend)
        self.set_stats({})

    def set_stats(self, stats: dict) -> None:
        blocks = KvBlocks.from_stats(stats)
        self.bar.set_blocks(blocks)
        self.legend.setText(" ".join(f'<span style="color:{c}">■</span> {n} {kind}' for kind, n, c in blocks.parts()))
        tokens = blocks.block_size
        self.setToolTip(
            f"KV memory: {blocks.total} blocks of {tokens} tokens\n"
            f"shared by several chats: {blocks.shared}\nused by one chat: {blocks.used}\n"
            f"cached for reuse: {blocks.cached}\nfree: {blocks.free}")
