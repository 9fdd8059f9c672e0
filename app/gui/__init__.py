"""The PySide6 desktop app: the only part of Folio that imports Qt."""
