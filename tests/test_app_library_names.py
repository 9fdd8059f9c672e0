"""The library panel shows hostile file names as they are, not as what they hold: control
characters, a right-to-left override and undecodable bytes are spelled out, and markup in a name
stays text."""
import os
import time

from PySide6.QtCore import Qt

from app.gui.library_service import FAILED, FileJob
from app_fixtures import make_window, shared_backend  # noqa: F401 (fixtures)
from rag.store import DocumentInfo

HOSTILE = os.fsdecode(b"<b>bold\n\x1b[31m\xe2\x80\xaegpj\xff.txt")  # a name may hold any byte but / and NUL
SHOWN = "<b>bold\\n\\x1b[31m\\u202egpj\\xff.txt"


def test_a_job_row_shows_a_hostile_name_escaped_and_as_plain_text(qtbot, make_window, tmp_path):
    panel = make_window().library_panel
    path = tmp_path / HOSTILE
    panel.show_job(FileJob(20_000, path, FAILED, 1.0, error=f"cannot read {path.name}"))
    row = panel.rows[20_000]

    assert row.name.text() == SHOWN
    assert row.name.textFormat() == Qt.TextFormat.PlainText and row.state.textFormat() == Qt.TextFormat.PlainText
    assert row.state.text() == f"Failed: cannot read {SHOWN}"
    assert "&lt;b&gt;bold\\n" in row.name.toolTip() and "<b>" not in row.name.toolTip()


def test_the_document_list_shows_a_hostile_name_escaped(qtbot, make_window, tmp_path):
    panel = make_window().library_panel
    source = tmp_path / HOSTILE
    panel.show_documents([DocumentInfo("doc-1", source, "", "text", None, 2, 40, "0" * 64, time.time())])

    item = panel.documents.item(0)
    assert item.text().splitlines()[0] == SHOWN
    assert item.toolTip() == f"<p style='white-space:pre'>{tmp_path}/{SHOWN.replace('<b>', '&lt;b&gt;')}</p>"
    assert item.data(Qt.ItemDataRole.UserRole + 1) == source  # Open gets the real path, every byte of it
