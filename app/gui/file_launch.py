"""Opening a document in the application the desktop chose for it, and saying so when there is none
(a minimal desktop, a file type nothing claims, a file that has moved)."""
from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import Qt, QUrl
from PySide6.QtGui import QDesktopServices
from PySide6.QtWidgets import QMessageBox, QWidget


def open_file(path: str) -> bool:
    """Open a file in the application the desktop chose for it; False when there is none."""
    return Path(path).exists() and QDesktopServices.openUrl(QUrl.fromLocalFile(path))


def tell_cannot_open(parent: QWidget, paths: list[str]) -> QMessageBox:
    """Say that nothing could open these files, and where they are."""
    names = ", ".join(Path(p).name for p in paths)
    box = QMessageBox(QMessageBox.Icon.Information, "Cannot open", f"No application is set up to open {names}.",
                      QMessageBox.StandardButton.Ok, parent)
    box.setObjectName("cannotOpen")
    box.setInformativeText("Open it from your file manager: " + "; ".join(
        f"{p}" if Path(p).exists() else f"{p} (no longer there)" for p in paths))
    box.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
    box.open()
    return box
