"""The document library side panel: the documents, each file being indexed with its own progress
bar, cancel button and error, and a drop target for files and folders.

The jobs sit in a scroll area under a header that counts them, folds them away and clears the
finished ones: a folder of a hundred files never makes the panel (or the window) taller.

File names and titles come from outside: they are shown through `printable` (a control character,
a right-to-left override or a byte that is not UTF-8 is spelled out) and always as plain text, so
that a name like "<b>x</b>.txt" is not taken for markup.
"""
from __future__ import annotations

import html
from pathlib import Path

from PySide6.QtCore import QStandardPaths, Qt, Signal
from PySide6.QtWidgets import (QFileDialog, QFrame, QHBoxLayout, QLabel, QListWidget, QListWidgetItem,
                               QProgressBar, QPushButton, QScrollArea, QSizePolicy, QToolButton, QVBoxLayout, QWidget)

from app.gui.file_drops import FileDropTarget
from app.gui.file_launch import open_file, tell_cannot_open
from app.gui.library_service import CANCELLED, FAILED, READING, FileJob, LibraryService
from app.gui.theme import icon
from app.printable import printable
from app.wording import plural
from rag.loaders import SUPPORTED_SUFFIXES  # the formats rag reads (stdlib only; rag itself loads numpy)

JOB_LIST_MAX_ROWS = 4  # rows the job list shows before it scrolls
DOCUMENT_TYPES = (f"Documents ({' '.join(f'*{s}' for s in sorted(SUPPORTED_SUFFIXES))})", "All files (*)")
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
        self.name = plain_label(printable(job.path.name))
        self.name.setObjectName("jobName")
        self.name.setToolTip(plain_tooltip(str(job.path)))
        self.name.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
        self.bar = QProgressBar()
        self.bar.setRange(0, 1000)
        self.bar.setTextVisible(False)
        self.bar.setMaximumHeight(max(6, self.fontMetrics().height() // 2))
        self.state = plain_label("")
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
        unknown = job.state == READING and job.fraction == 0  # nothing read yet (or no pages to count): a moving bar
        self.bar.setRange(0, 0 if unknown else 1000)
        self.bar.setValue(int(job.fraction * 1000))
        self.bar.setVisible(not job.finished)
        text = _STATE_TEXT.get(job.state, job.state)
        if unknown:
            text += "…"
        elif not job.finished and job.state != "queued":
            text += f" {job.fraction:.0%}"
        if job.error:
            text = f"{text}: {printable(job.error)}"
        self.state.setText(text)
        if self.property("failed") != (job.state == FAILED):  # re-styling every progress tick is costly
            self.setProperty("failed", job.state == FAILED)
            self.style().unpolish(self)
            self.style().polish(self)
        tip = "Remove from this list" if job.finished else f"Stop indexing {printable(job.path.name)}"
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

        self.status = plain_label("Opening the library…")
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
        self.jobs.setObjectName("jobList")
        self.jobs_layout = QVBoxLayout(self.jobs)
        self.jobs_layout.setContentsMargins(0, 0, 0, 0)
        self.jobs_layout.setSpacing(4)
        self.jobs_layout.addStretch(1)
        self.job_scroll = QScrollArea()
        self.job_scroll.setObjectName("jobScroll")
        self.job_scroll.setWidgetResizable(True)
        self.job_scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.job_scroll.setFrameShape(QFrame.Shape.NoFrame)
        self.job_scroll.setWidget(self.jobs)
        self.jobs_toggle = QToolButton()
        self.jobs_toggle.setObjectName("jobsToggle")
        self.jobs_toggle.setCheckable(True)
        self.jobs_toggle.setChecked(True)
        self.jobs_toggle.setAutoRaise(True)
        self.jobs_toggle.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
        self.jobs_toggle.toggled.connect(self._fold_jobs)
        self.clear_button = QPushButton("Clear finished")
        self.clear_button.setToolTip("Remove the files that are done from this list")
        self.clear_button.clicked.connect(self.clear_finished)
        self.jobs_header = QWidget()
        header = QHBoxLayout(self.jobs_header)
        header.setContentsMargins(0, 0, 0, 0)
        header.addWidget(self.jobs_toggle, 1)
        header.addWidget(self.clear_button)
        self.jobs_header.hide()
        self.job_scroll.hide()

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
        layout.addWidget(self.jobs_header)
        layout.addWidget(self.job_scroll)

        library.documentsChanged.connect(self.show_documents)
        library.jobChanged.connect(self.show_job)
        library.openFailed.connect(lambda message: self.status.setText(printable(message, keep="\n")))
        self.show_documents(library.documents)

    # ------------------------------------------------------------------ documents

    def show_documents(self, documents) -> None:
        selected = set(self.selected_ids())
        self.documents.clear()
        for doc in documents:
            name, title = printable(doc.source.name), printable(doc.title or "")
            details = [name] if title and title != name else []
            if doc.num_pages:
                details.append(plural(doc.num_pages, "page"))
            details.append(plural(doc.num_chunks, "passage"))
            item = QListWidgetItem(icon("document"), f"{title or name}\n" + " · ".join(details))
            item.setData(Qt.ItemDataRole.UserRole, doc.doc_id)
            item.setData(Qt.ItemDataRole.UserRole + 1, doc.source)  # a Path: a str would lose undecodable bytes
            item.setToolTip(plain_tooltip(str(doc.source)))
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

    def open_selected(self) -> list[str]:
        """Open each selected document in its application; says so for those nothing can open.
        Returns the paths that could not be opened."""
        failed = [path for path in (str(item.data(Qt.ItemDataRole.UserRole + 1)) for item in self.documents.selectedItems())
                  if not open_file(path)]
        if failed:
            tell_cannot_open(self, failed)
        return failed

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
            self.jobs_layout.insertWidget(self.jobs_layout.count() - 1, row)  # before the stretch
        self._update_jobs()

    def clear_finished(self) -> None:
        for row in [r for r in self.rows.values() if r.job.finished]:
            self._drop_row(row)

    def _drop_row(self, row: JobRow) -> None:
        self.rows.pop(row.job.id, None)
        self.jobs_layout.removeWidget(row)
        row.deleteLater()
        self._update_jobs()

    def _fold_jobs(self, shown: bool) -> None:
        self.job_scroll.setVisible(shown and bool(self.rows))
        self._update_jobs()

    def _update_jobs(self) -> None:
        """The header's count and the list's height: as tall as its rows, up to JOB_LIST_MAX_ROWS."""
        rows = list(self.rows.values())
        self.jobs_header.setVisible(bool(rows))
        self.job_scroll.setVisible(bool(rows) and self.jobs_toggle.isChecked())
        done = sum(r.job.finished for r in rows)
        self.clear_button.setEnabled(done > 0)
        running = len(rows) - done
        count = f"Indexing {running} of {plural(len(rows), 'file')}" if running else f"{plural(len(rows), 'file')} done"
        self.jobs_toggle.setText(count)
        self.jobs_toggle.setArrowType(Qt.ArrowType.DownArrow if self.jobs_toggle.isChecked() else Qt.ArrowType.RightArrow)
        shown = rows[:JOB_LIST_MAX_ROWS]
        spacing = self.jobs_layout.spacing()
        self.job_scroll.setFixedHeight(sum(r.sizeHint().height() + spacing for r in shown) if shown else 0)

    def choose_files(self) -> QFileDialog:
        dialog = QFileDialog(self, "Add documents to the library", start_folder())
        dialog.setFileMode(QFileDialog.FileMode.ExistingFiles)
        dialog.setNameFilters(list(DOCUMENT_TYPES))
        dialog.filesSelected.connect(lambda files: self.filesDropped.emit([Path(f) for f in files]))
        dialog.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        dialog.open()
        return dialog

    def choose_folder(self) -> QFileDialog:
        dialog = QFileDialog(self, "Add a folder to the library", start_folder())
        dialog.setFileMode(QFileDialog.FileMode.Directory)
        dialog.fileSelected.connect(lambda folder: self.filesDropped.emit([Path(folder)]))
        dialog.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        dialog.open()
        return dialog


def start_folder() -> str:
    """Where file dialogs open: the Documents folder if there is one, else the home folder
    (never the working directory, which for a desktop launch is anywhere)."""
    documents = QStandardPaths.writableLocation(QStandardPaths.StandardLocation.DocumentsLocation)
    return documents if documents and Path(documents).is_dir() else str(Path.home())


def plain_label(text: str) -> QLabel:
    """A label that never reads its text as markup (Qt guesses, from a leading tag)."""
    label = QLabel(text)
    label.setTextFormat(Qt.TextFormat.PlainText)
    return label


def plain_tooltip(text: str) -> str:
    """A tooltip showing `text` as it is: tooltips have no plain-text mode, so it is given as
    escaped markup (on one line)."""
    return f"<p style='white-space:pre'>{html.escape(printable(text))}</p>"
