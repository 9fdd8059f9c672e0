"""Render the app icon, `linux/folio.svg`, into the files each platform wants:
`linux/folio.png` (256 px, for the hicolor theme), `windows/folio.ico` and `macos/folio.icns`.

Qt's own ICO and ICNS writers store a single size, so both containers are packed here, each size
as a PNG (which Windows Vista+ and macOS 10.7+ read): small sizes stay sharp instead of being
scaled down from 256 px at run time. The outputs are committed; run this after editing the SVG:
`QT_QPA_PLATFORM=offscreen .venv/bin/python packaging/render_icons.py`.
"""
from __future__ import annotations

import struct
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SVG = HERE / "linux" / "folio.svg"
PNG = HERE / "linux" / "folio.png"
ICO = HERE / "windows" / "folio.ico"
ICNS = HERE / "macos" / "folio.icns"

PNG_SIZE = 256
ICO_SIZES = (16, 24, 32, 48, 64, 128, 256)
ICNS_TYPES = {16: b"icp4", 32: b"icp5", 64: b"icp6", 128: b"ic07", 256: b"ic08", 512: b"ic09", 1024: b"ic10"}


def render_png(svg: Path, size: int) -> bytes:
    """The SVG drawn on a transparent `size` x `size` square, PNG-encoded."""
    from PySide6.QtCore import QBuffer, QByteArray, QIODevice, Qt
    from PySide6.QtGui import QImage, QPainter
    from PySide6.QtSvg import QSvgRenderer

    renderer = QSvgRenderer(str(svg))
    if not renderer.isValid():
        raise ValueError(f"{svg} is not an SVG that Qt can draw")
    image = QImage(size, size, QImage.Format.Format_ARGB32)
    image.fill(Qt.GlobalColor.transparent)
    painter = QPainter(image)
    painter.setRenderHint(QPainter.RenderHint.Antialiasing)
    renderer.render(painter)
    painter.end()
    data = QByteArray()
    buffer = QBuffer(data)
    buffer.open(QIODevice.OpenModeFlag.WriteOnly)
    image.save(buffer, "PNG")
    return bytes(data)


def pack_ico(pngs: dict[int, bytes]) -> bytes:
    """ICONDIR, one 16-byte ICONDIRENTRY per size (0 means 256), then the PNGs."""
    header = struct.pack("<HHH", 0, 1, len(pngs))
    offset = len(header) + 16 * len(pngs)
    entries, images = b"", b""
    for size, png in sorted(pngs.items()):
        side = 0 if size >= 256 else size
        entries += struct.pack("<BBBBHHII", side, side, 0, 0, 1, 32, len(png), offset + len(images))
        images += png
    return header + entries + images


def pack_icns(pngs: dict[int, bytes]) -> bytes:
    """'icns' and the total length, then one (type, length, PNG) element per size, big-endian."""
    body = b"".join(ICNS_TYPES[size] + struct.pack(">I", 8 + len(png)) + png for size, png in sorted(pngs.items()))
    return b"icns" + struct.pack(">I", 8 + len(body)) + body


def main() -> int:
    from PySide6.QtGui import QGuiApplication

    _app = QGuiApplication.instance() or QGuiApplication(sys.argv[:1])  # QPainter needs one
    PNG.write_bytes(render_png(SVG, PNG_SIZE))
    ICO.write_bytes(pack_ico({s: render_png(SVG, s) for s in ICO_SIZES}))
    ICNS.write_bytes(pack_icns({s: render_png(SVG, s) for s in ICNS_TYPES}))
    for path in (PNG, ICO, ICNS):
        print(f"wrote {path.relative_to(HERE.parent)} ({path.stat().st_size // 1024} KiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
