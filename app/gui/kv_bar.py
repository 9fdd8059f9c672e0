"""A picture of the engine's KV memory: blocks shared by several chats, used by one, cached for
reuse, and free, as one bar with a legend that counts the tokens of context each part holds,
redrawn whenever the engine's stats change."""
from __future__ import annotations

from PySide6.QtCore import QRectF, QSize, Qt
from PySide6.QtGui import QColor, QPainter, QPainterPath
from PySide6.QtWidgets import QHBoxLayout, QLabel, QSizePolicy, QWidget

from app.backends.kv import KvBlocks
from app.gui.theme import colors

MIN_SEGMENT = 3.0  # logical pixels: a non-empty kind never vanishes from the picture
PLACE = {"RAM": "in RAM", "disk": "on disk"}


def kv_parts(blocks: KvBlocks) -> list[tuple[str, int, str]]:
    """(kind, count, colour) of each part of the picture, in the current theme."""
    c = colors()
    colour = {"shared": c.kv_shared, "used": c.kv_used, "cached": c.kv_cached, "free": c.kv_free}
    return [(kind, n, colour[kind]) for kind, n in blocks.counts()]


class KvBar(QWidget):
    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.blocks = KvBlocks()
        self.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Fixed)
        self.setAccessibleName("KV memory")

    def sizeHint(self) -> QSize:
        return QSize(self.fontMetrics().averageCharWidth() * 28, max(8, self.fontMetrics().height() * 2 // 3))

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
        widths = {kind: (max(MIN_SEGMENT, width * n / total) if n else 0.0) for kind, n, _ in kv_parts(self.blocks)}
        widths["free"] = max(0.0, width - sum(w for k, w in widths.items() if k != "free"))
        out, x = [], 0.0
        for kind, _, _ in kv_parts(self.blocks):
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
        colour = {kind: c for kind, _, c in kv_parts(self.blocks)}
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
        tokens = dict(blocks.token_counts())
        tiers = blocks.tier_tokens()
        self.legend.setText(f"{blocks.usage()} " + " ".join(
            f'<span style="color:{c}">■</span> {tokens[kind]:,} {kind}' for kind, _, c in kv_parts(blocks))
            + "".join(f" · {where} {n:,}" for where, n in tiers))
        self.setToolTip(
            f"KV memory: {blocks.usage()}\n"
            f"{blocks.total:,} blocks of {blocks.block_size} tokens\n"
            f"shared by several chats: {tokens['shared']:,} tokens ({blocks.shared:,} blocks)\n"
            f"used by one chat: {tokens['used']:,} tokens ({blocks.used:,} blocks)\n"
            f"cached for reuse: {tokens['cached']:,} tokens ({blocks.cached:,} blocks)\n"
            f"free: {tokens['free']:,} tokens ({blocks.free:,} blocks)"
            + "".join(f"\nkept {PLACE[where]} for reuse: {n:,} tokens" for where, n in tiers))
        self.bar.setAccessibleDescription(blocks.usage())
