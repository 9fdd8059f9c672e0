"""Where Folio keeps its data: chats, settings, logs and the document library, all in one folder.

`FOLIO_DATA_DIR` (or the GUI's `--data-dir`) overrides the platform's user data folder (tests,
portable installs). Used by both the CLI (`data_dir`, `library_dir`) and the GUI.
"""
from __future__ import annotations

import os
from pathlib import Path

APP_NAME = "folio"


def data_dir(override: str | os.PathLike | None = None) -> Path:
    chosen = override or os.environ.get("FOLIO_DATA_DIR")
    if chosen:
        return Path(chosen).expanduser()
    import platformdirs
    return Path(platformdirs.user_data_dir(APP_NAME, appauthor=False))


def library_dir(base: Path | None = None) -> Path:
    return (base or data_dir()) / "library"


def settings_path(base: Path) -> Path:
    return base / "settings.json"


def history_path(base: Path) -> Path:
    return base / "history.sqlite3"


def log_path(base: Path) -> Path:
    return base / "folio.log"
