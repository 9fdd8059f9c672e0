"""The document library side panel: the documents, each file being indexed with its own progress
bar, cancel button and error, and a drop target for files and folders."""
from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import Qt, QUrl, Signal
from PySide6.QtGui import QDesktopServices
from PySide6.QtWidgets import (QFileDialog, QFrame, QHBoxLayout, QLabel, QListWidget, QListWidgetItem, QProgressBar,
                               QPushButton, QSizePolicy, QToolButton, QVBoxLayout, QWidget)

from app.gui.file_drops import FileDropTarget
from app.gui.library_service import CANCELLED, FAILED, FileJob, LibraryService
from app.gui.theme import icon

_STATE_TEXT = {"queued": "Waiting", "reading": "Reading", "embedding": "Indexing", "added": "Added",
               "updated": "Updated", "unchanged": "Already in the library", "duplicate": "Duplicate",
               FAILED: "Failed", CANCELLED: "Cancelled"}


class JobRow(QFrame):
    """One file: name, bar, state; Cancel while running, Dismiss once finished."""

    dismissed = Signal(object)  # this row

    def __init__(self, job: FileJob, library: LibraryService, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("jobRow")
        self.job = job
        self.library = library
        self.name = QLabel(job.path.name)
        self.name.setObjectName("jobName")
        self.name.setToolTip(str(job.path))
        self.name.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
        self.bar = QProgressBar()
        self.bar.setRange(0, 1000)
        self.bar.setTextVisible(False)
        self.bar.setMaximumHeight(max(6, self.fontMetrics().height() // 2))
        self.state = QLabel()
        self.state.setObjectName("jobState")
        self.state.setWordWrap(True)
        self.button = QToolButton()
        self.button.setIcon(icon("close"))
        self.button.setAutoRaise(True)
        self.button.clicked.connect(self._button_clicked)
        top = QHBoxLayout()
        top.setContentsMargins(0, 0, 0, 0)
        top.addWidget(self.name, 1)
        top.addWidget(self.button)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(6, 4, 6, 4)
        layout.setSpacing(2)
        layout.addLayout(top)
        layout.addWidget(self.bar)
        layout.addWidget(self.state)
        self.update_job(job)

    def update_job(self, job: FileJob) -> None:
        self.job = job
        self.bar.setValue(int(job.fraction * 1000))
        self.bar.setVisible(not job.finished)
        text = _STATE_TEXT.get(job.state, job.state)
        if not job.finished and job.state != "queued":
            text += f" {job.fraction:.0%}"
        if job.error:
            text = f"{text}: {job.error}"
        self.state.setText(text)
        if self.property("failed") != (job.state == FAILED):  # re-styling every progress tick is costly
            self.setProperty("failed", job.state == FAILED)
            self.style().unpolish(self)
            self.style().polish(self)
        tip = "Remove from this list" if job.finished else f"Stop indexing {job.path.name}"
        self.button.setToolTip(tip)
        self.button.setAccessibleName(tip)

    def _button_clicked(self) -> None:
        if self.job.finished:
            self.dismissed.emit(self)
        else:
            self.library.cancel(self.job.id)


class LibraryPanel(FileDropTarget, QWidget):
    pinRequested = Signal(object)   # list[str] doc ids, for the current chat
    filesDropped = Signal(object)   # list[Path]

    def __init__(self, library: LibraryService, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("libraryPanel")
        self.setAcceptDrops(True)
        self.library = library
        self.rows: dict[int, JobRow] = {}

        add_files = QPushButton(icon("add-file"), "Add files…")
        add_files.clicked.connect(self.choose_files)
        add_folder = QPushButton(icon("add-folder"), "Add folder…")
        add_folder.clicked.connect(self.choose_folder)
        buttons = QHBoxLayout()
        buttons.addWidget(add_files)
        buttons.addWidget(add_folder)

        self.status = QLabel("Opening the library…")
        self.status.setObjectName("libraryStatus")
        self.status.setWordWrap(True)
        self.documents = QListWidget()
        self.documents.setObjectName("documentList")
        self.documents.setAccessibleName("Documents in the library")
        self.documents.setSelectionMode(QListWidget.SelectionMode.ExtendedSelection)
        self.documents.setWordWrap(True)
        self.documents.itemActivated.connect(lambda _item: self.pin_selected())
        self.documents.itemSelectionChanged.connect(self._update_buttons)

        self.pin_button = QPushButton(icon("pin"), "Pin to chat")
        self.pin_button.setToolTip("This chat will read the selected documents whole (Enter)")
        self.pin_button.clicked.connect(self.pin_selected)
        self.open_button = QPushButton(icon("open-external"), "Open")
        self.open_button.clicked.connect(self.open_selected)
        self.remove_button = QPushButton(icon("remove"), "Remove")
        self.remove_button.clicked.connect(self.remove_selected)
        doc_buttons = QHBoxLayout()
        for b in (self.pin_button, self.open_button, self.remove_button):
            doc_buttons.addWidget(b)

        self.jobs = QWidget()
        self.jobs_layout = QVBoxLayout(self.jobs)
        self.jobs_layout.setContentsMargins(0, 0, 0, 0)
        self.jobs_layout.setSpacing(4)
        self.clear_button = QPushButton("Clear finished")
        self.clear_button.clicked.connect(self.clear_finished)
        self.clear_button.hide()

        hint = QLabel("Drop files or folders here, or on a chat to pin them there.")
        hint.setObjectName("dropHint")
        hint.setWordWrap(True)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(8, 8, 8, 8)
        layout.addLayout(buttons)
        layout.addWidget(hint)
        layout.addWidget(self.status)
        layout.addWidget(self.documents, 1)
        layout.addLayout(doc_buttons)
        layout.addWidget(self.jobs)
        layout.addWidget(self.clear_button, 0, Qt.AlignmentFlag.AlignRight)

        library.documentsChanged.connect(self.show_documents)
        library.jobChanged.connect(self.show_job)
        library.openFailed.connect(self.status.setText)
        self.show_documents(library.documents)

    # ------------------------------------------------------------------ documents

    def show_documents(self, documents) -> None:
        selected = set(self.selected_ids())
        self.documents.clear()
        for doc in documents:
            details = [doc.source.name] if doc.title and doc.title != doc.source.name else []
            if doc.num_pages:
                details.append(_count(doc.num_pages, "page"))
            details.append(_count(doc.num_chunks, "passage"))
            item = QListWidgetItem(icon("document"), f"{doc.title or doc.source.name}\n" + " · ".join(details))
            item.setData(Qt.ItemDataRole.UserRole, doc.doc_id)
            item.setData(Qt.ItemDataRole.UserRole + 1, str(doc.source))
            item.setToolTip(str(doc.source))
            self.documents.addItem(item)
            item.setSelected(doc.doc_id in selected)
        if self.library.library is not None:  # open: say when it is empty
            self.status.setText("" if documents else "The library is empty.")
        self._update_buttons()

    def selected_ids(self) -> list[str]:
        return [item.data(Qt.ItemDataRole.UserRole) for item in self.documents.selectedItems()]

    def pin_selected(self) -> None:
        if self.selected_ids():
            self.pinRequested.emit(self.selected_ids())

    def open_selected(self) -> None:
        for item in self.documents.selectedItems():
            QDesktopServices.openUrl(QUrl.fromLocalFile(item.data(Qt.ItemDataRole.UserRole + 1)))

    def remove_selected(self) -> None:
        for doc_id in self.selected_ids():
            self.library.remove(doc_id)

    def _update_buttons(self) -> None:
        any_selected = bool(self.selected_ids())
        for b in (self.pin_button, self.open_button, self.remove_button):
            b.setEnabled(any_selected)

    # ------------------------------------------------------------------ indexing

    def show_job(self, job: FileJob) -> None:
        row = self.rows.get(job.id)
        if row is not None:
            row.update_job(job)
        else:
            row = JobRow(job, self.library)
            row.dismissed.connect(self._drop_row)
            self.rows[job.id] = row
            self.jobs_layout.addWidget(row)
        self.clear_button.setVisible(any(r.job.finished for r in self.rows.values()))

    def clear_finished(self) -> None:
        for row in [r for r in self.rows.values() if r.job.finished]:
            self._drop_row(row)

    def _drop_row(self, row: JobRow) -> None:
        self.rows.pop(row.job.id, None)
        row.deleteLater()
        self.clear_button.setVisible(any(r.job.finished for r in self.rows.values()))

    def choose_files(self) -> None:
        dialog = QFileDialog(self, "Add documents to the library")
        dialog.setFileMode(QFileDialog.FileMode.ExistingFiles)
        dialog.filesSelected.connect(lambda files: self.filesDropped.emit([Path(f) for f in files]))
        dialog.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        dialog.open()

    def choose_folder(self) -> None:
        dialog = QFileDialog(self, "Add a folder to the library")
        dialog.setFileMode(QFileDialog.FileMode.Directory)
        dialog.fileSelected.connect(lambda folder: self.filesDropped.emit([Path(folder)]))
        dialog.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        dialog.open()


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")
