"""The main window: chat tabs, the library dock, the status bar with engine stats and the KV
picture, an inline banner for engine and library errors, and the menus and shortcuts."""
from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QAction, QKeySequence, QPainter
from PySide6.QtWidgets import (QApplication, QDockWidget, QFrame, QHBoxLayout, QInputDialog, QLabel, QMainWindow,
                               QPushButton, QTabBar, QTabWidget, QToolButton, QVBoxLayout, QWidget)

from app.gui import engine_bridge
from app.gui.chat_session import ChatSession
from app.gui.chat_view import ChatView
from app.gui.engine_bridge import EngineBridge
from app.gui.history import ChatRecord, History
from app.gui.kv_bar import KvIndicator
from app.gui.library_panel import LibraryPanel
from app.gui.library_service import LibraryService
from app.paths import history_path, library_dir
from app.gui.settings import Settings, load_settings, save_settings
from app.gui.settings_dialog import SettingsDialog
from app.gui.theme import apply_theme, icon

log = logging.getLogger(__name__)
BUSY_MARK = "● "


def remote_status(detail: str, stats: dict) -> str:
    """The status line for a remote server: its KV memory is not ours to see, but the last
    answer's token counts are."""
    if not stats:
        return f"{detail} · remote"
    count = {name: int(stats.get(name, 0)) for name in ("prompt_tokens", "cached_tokens", "completion_tokens")}
    return (f"{detail} · remote · last answer: {count['prompt_tokens']} prompt tokens "
            f"({count['cached_tokens']} cached), {count['completion_tokens']} generated")


class ErrorBanner(QFrame):
    """An error that concerns the whole window (no model, no library), with what to do next."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("errorBanner")
        self.text = QLabel()
        self.text.setWordWrap(True)
        self.text.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.icon = QLabel()
        self.settings_button = QPushButton("Settings…")
        self.retry_button = QPushButton("Retry")
        self.close_button = QPushButton("Dismiss")
        self.close_button.clicked.connect(self.hide)
        layout = QHBoxLayout(self)
        layout.addWidget(self.icon)
        layout.addWidget(self.text, 1)
        for b in (self.settings_button, self.retry_button, self.close_button):
            layout.addWidget(b)
        self.hide()

    def show_error(self, message: str) -> None:
        self.icon.setPixmap(icon("warning").pixmap(self.fontMetrics().height(), self.fontMetrics().height()))
        self.text.setText(message)
        self.show()


class ElidedLabel(QLabel):
    """One line that ends in "…" where it does not fit (a plain QLabel cuts it mid-word), with the
    whole line as its tooltip; `text()` stays the whole line."""

    def setText(self, text: str) -> None:
        super().setText(text)
        self.setToolTip(text)

    def paintEvent(self, event) -> None:
        rect = self.contentsRect()
        shown = self.fontMetrics().elidedText(self.text(), Qt.TextElideMode.ElideRight, rect.width())
        painter = QPainter(self)
        self.style().drawItemText(painter, rect, int(self.alignment()), self.palette(), self.isEnabled(), shown,
                                  self.foregroundRole())
        painter.end()


class MainWindow(QMainWindow):
    closed = Signal()  # after the window closed: every thread it started has stopped (see closeEvent)

    def __init__(self, data_dir: Path, settings: Settings | None = None, backend=None, embedder=None,
                 run_overrides: list[dict] | None = None) -> None:
        """`backend`: a ready `app.backends.Backend` to use instead of opening one (shared by tests;
        the window never shuts it down). `embedder`: a rag Embedder to share. `run_overrides`: one dict
        of Settings fields per command-line option (--model, --device, --theme), applied on top of
        `settings` for this run only: they are never saved unless the user changes those fields."""
        super().__init__()
        self.data_dir = data_dir
        self._saved = settings if settings is not None else load_settings(data_dir)
        self._run_overrides = list(run_overrides or [])
        self.settings = replace(self._saved, **{k: v for group in self._run_overrides for k, v in group.items()})
        self.setWindowTitle("Folio")
        self.resize(1200, 800)
        self.history = History(history_path(data_dir))
        self.bridge = EngineBridge(self)
        # the embedder the service opens (when none is given) embeds on the CPU while the engine answers on the GPU
        self.library = LibraryService(library_dir(data_dir), embedder, self, engine_busy=self.bridge.answering_on_gpu)
        self.sessions: dict[int, ChatSession] = {}   # open tabs, by chat id
        self._closing: set[ChatSession] = set()     # closed tabs whose answer is still stopping
        self.settings_dialog: SettingsDialog | None = None
        self._closed = False
        self._closing_parts = {self.bridge, self.library}  # still stopping after the window closed
        self.bridge.closed.connect(lambda: self._part_closed(self.bridge))
        self.library.closed.connect(lambda: self._part_closed(self.library))

        self.banner = ErrorBanner()
        self.banner.settings_button.clicked.connect(self.open_settings)
        self.banner.retry_button.clicked.connect(self.restart_engine)
        self.tabs = QTabWidget()
        self.tabs.setObjectName("chatTabs")
        self.tabs.setMovable(True)
        self.tabs.setDocumentMode(True)
        self.tabs.tabBar().setDrawBase(False)
        self.tabs.tabBar().tabMoved.connect(lambda *_: self._save_order())
        self.tabs.tabBarDoubleClicked.connect(lambda i: self.rename_tab(i) if i >= 0 else self.new_chat())
        self.tabs.currentChanged.connect(self._current_changed)
        new_tab = QPushButton(icon("new-chat"), "")
        new_tab.setToolTip("New chat (Ctrl+T)")
        new_tab.setAccessibleName("New chat")
        new_tab.setFlat(True)
        new_tab.clicked.connect(self.new_chat)
        self.tabs.setCornerWidget(new_tab, Qt.Corner.TopRightCorner)
        central = QWidget()
        column = QVBoxLayout(central)
        column.setContentsMargins(0, 0, 0, 0)
        column.setSpacing(0)
        column.addWidget(self.banner)
        column.addWidget(self.tabs, 1)
        self.setCentralWidget(central)

        self.library_panel = LibraryPanel(self.library)
        self.library_panel.filesDropped.connect(lambda paths: self.index(paths))
        self.library_panel.pinRequested.connect(self._pin_to_current)
        self.dock = QDockWidget("Library", self)
        self.dock.setObjectName("libraryDock")
        self.dock.setWidget(self.library_panel)
        self.dock.setFeatures(QDockWidget.DockWidgetFeature.DockWidgetMovable
                              | QDockWidget.DockWidgetFeature.DockWidgetClosable)
        self.addDockWidget(Qt.DockWidgetArea.LeftDockWidgetArea, self.dock)
        self.resizeDocks([self.dock], [300], Qt.Orientation.Horizontal)

        self.engine_label = ElidedLabel()
        self.engine_label.setObjectName("engineLabel")
        # the KV picture keeps its size; a narrow window cuts this line short rather than widening
        self.engine_label.setMinimumWidth(self.engine_label.fontMetrics().averageCharWidth() * 24)
        self.kv = KvIndicator()
        self.statusBar().addWidget(self.engine_label, 1)
        self.statusBar().addPermanentWidget(self.kv)
        self.bridge.stateChanged.connect(self._engine_state)
        self.bridge.stateChanged.connect(lambda *_: self._show_loaded_in_settings())
        self.bridge.statsChanged.connect(self._engine_stats)
        self.library.openFailed.connect(self.banner.show_error)

        self._make_menus()
        self._restore_tabs()
        if backend is not None:
            self.bridge.use(backend, self.settings.model_label())
        else:
            self.restart_engine()

    # ------------------------------------------------------------------ menus and shortcuts

    def _make_menus(self) -> None:
        def action(menu, text: str, slot, shortcut=None, icon_name: str | None = None) -> QAction:
            a = menu.addAction(icon(icon_name), text) if icon_name else menu.addAction(text)
            a.triggered.connect(lambda *_: slot())
            if isinstance(shortcut, QKeySequence.StandardKey):
                a.setShortcuts(QKeySequence.keyBindings(shortcut) or [QKeySequence(fallbacks[shortcut])])
            elif shortcut is not None:
                a.setShortcuts(shortcut if isinstance(shortcut, list) else [QKeySequence(shortcut)])
            return a

        # the platform's standard keys, where it has them; these where it has none
        fallbacks = {QKeySequence.StandardKey.AddTab: "Ctrl+T", QKeySequence.StandardKey.Close: "Ctrl+W",
                     QKeySequence.StandardKey.Quit: "Ctrl+Q", QKeySequence.StandardKey.Open: "Ctrl+O",
                     QKeySequence.StandardKey.Preferences: "Ctrl+,"}

        chat = self.menuBar().addMenu("&Chat")
        self.new_chat_action = action(chat, "&New chat", self.new_chat, QKeySequence.StandardKey.AddTab, "new-chat")
        action(chat, "&Close chat", lambda: self.close_tab(self.tabs.currentIndex()), QKeySequence.StandardKey.Close)
        action(chat, "&Reopen closed chat", self.reopen_chat, "Ctrl+Shift+T")
        action(chat, "Re&name chat…", lambda: self.rename_tab(self.tabs.currentIndex()), "F2")
        chat.addSeparator()
        action(chat, "Next chat", lambda: self._step_tab(1), [QKeySequence("Ctrl+Tab"), QKeySequence("Ctrl+PgDown")])
        action(chat, "Previous chat", lambda: self._step_tab(-1),
               [QKeySequence("Ctrl+Shift+Tab"), QKeySequence("Ctrl+PgUp")])
        chat.addSeparator()
        action(chat, "&Quit", self.close, QKeySequence.StandardKey.Quit)
        library = self.menuBar().addMenu("&Library")
        action(library, "Add &files…", self.library_panel.choose_files, QKeySequence.StandardKey.Open, "add-file")
        action(library, "Add f&older…", self.library_panel.choose_folder, "Ctrl+Shift+O", "add-folder")
        toggle = self.dock.toggleViewAction()
        toggle.setText("Show the &library panel")
        toggle.setShortcut(QKeySequence("Ctrl+L"))
        library.addAction(toggle)
        settings = self.menuBar().addMenu("&Settings")
        action(settings, "&Settings…", self.open_settings, QKeySequence.StandardKey.Preferences, "settings")
        action(settings, "Use the &light theme", lambda: self.set_theme("light"))
        action(settings, "Use the &dark theme", lambda: self.set_theme("dark"))
        action(settings, "&Reload the model", self.restart_engine)

    def _step_tab(self, step: int) -> None:
        if self.tabs.count():
            self.tabs.setCurrentIndex((self.tabs.currentIndex() + step) % self.tabs.count())

    # ------------------------------------------------------------------ tabs

    def _restore_tabs(self) -> None:
        current = self.history.current()  # before the first tab, whose arrival makes itself current
        records = self.history.open_chats()
        for record in records:
            self._add_tab(record)
        if not records:
            self.new_chat()
        if current in self.sessions:
            self.tabs.setCurrentWidget(self.view(current))

    def new_chat(self) -> ChatSession:
        session = self._add_tab(self.history.create_chat())
        self.tabs.setCurrentIndex(self.tabs.count() - 1)
        self.current_view().composer.setFocus()
        return session

    def _add_tab(self, record: ChatRecord) -> ChatSession:
        session = ChatSession(record, self.history, self.bridge, self.library, lambda: self.settings, self)
        view = ChatView(session, self.library)
        view.filesDropped.connect(lambda paths, s=session: self.index(paths, pin_to=s))
        self.sessions[record.id] = session
        index = self.tabs.addTab(view, record.title)
        self.tabs.setTabToolTip(index, record.title)
        close = QToolButton()
        close.setIcon(icon("close"))
        close.setAutoRaise(True)
        close.setToolTip("Close this chat (Ctrl+W)")
        close.setFocusPolicy(Qt.FocusPolicy.NoFocus)  # Ctrl+W does it from the keyboard
        close.clicked.connect(lambda: self.close_tab(self.tabs.indexOf(view)))
        self.tabs.tabBar().setTabButton(index, QTabBar.ButtonPosition.RightSide, close)
        session.titleChanged.connect(lambda *_a, s=session: self._update_tab(s))
        session.busyChanged.connect(lambda *_a, s=session: self._update_tab(s))
        return session

    def view(self, chat_id: int) -> ChatView:
        return next(self.tabs.widget(i) for i in range(self.tabs.count())
                    if self.tabs.widget(i).session.chat_id == chat_id)

    def current_view(self) -> ChatView | None:
        return self.tabs.currentWidget()

    def current_session(self) -> ChatSession | None:
        view = self.current_view()
        return view.session if view is not None else None

    def _update_tab(self, session: ChatSession) -> None:
        if session.chat_id not in self.sessions:
            return
        index = self.tabs.indexOf(self.view(session.chat_id))
        self.tabs.setTabText(index, (BUSY_MARK if session.busy else "") + session.title.replace("&", "&&"))
        self.tabs.setTabToolTip(index, session.title)

    def close_tab(self, index: int) -> None:
        """Close a chat: its answer is cancelled (its KV blocks go back to the pool) and saved as
        far as it got; the chat stays in the history (Ctrl+Shift+T reopens it)."""
        view = self.tabs.widget(index)
        if view is None:
            return
        session = view.session
        del self.sessions[session.chat_id]
        self.tabs.removeTab(index)
        view.deleteLater()
        self.history.close_chat(session.chat_id)
        if session.busy:
            self._closing.add(session)
            session.answerEnded.connect(lambda s=session: self._forget(s))
            session.stop()
        else:
            session.deleteLater()
        if self.tabs.count() == 0:
            self.new_chat()
        self._save_order()

    def _forget(self, session: ChatSession) -> None:
        self._closing.discard(session)
        session.deleteLater()

    def reopen_chat(self) -> ChatSession | None:
        record = self.history.reopen_last_closed()
        if record is None:
            return None
        for closing in [s for s in self._closing if s.chat_id == record.id]:
            closing.abandon()  # its answer still stopping: saved now, so one session writes the chat
        session = self._add_tab(record)
        self.tabs.setCurrentIndex(self.tabs.count() - 1)
        return session

    def rename_tab(self, index: int) -> QInputDialog | None:
        view = self.tabs.widget(index)
        if view is None:
            return None
        dialog = QInputDialog(self)
        dialog.setWindowTitle("Rename chat")
        dialog.setLabelText("Name:")
        dialog.setTextValue(view.session.title)
        dialog.textValueSelected.connect(view.session.rename)
        dialog.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        dialog.open()
        return dialog

    def _current_changed(self, index: int) -> None:
        view = self.tabs.widget(index)
        if view is not None:
            self.history.set_current(view.session.chat_id)

    def _save_order(self) -> None:
        self.history.set_order([self.tabs.widget(i).session.chat_id for i in range(self.tabs.count())])

    # ------------------------------------------------------------------ documents

    def index(self, paths: list[Path], pin_to: ChatSession | None = None) -> None:
        """Index dropped or chosen files; dropped on a chat, they are also pinned there."""
        if not self.dock.isVisible():
            self.dock.show()
        on_done = None
        if pin_to is not None:
            def on_done(doc_ids: list[str], session=pin_to) -> None:
                if session.chat_id in self.sessions:
                    session.pin(doc_ids)
        self.library.index(paths, on_done)

    def _pin_to_current(self, doc_ids: list[str]) -> None:
        session = self.current_session()
        if session is not None:
            session.pin(doc_ids)

    # ------------------------------------------------------------------ engine and settings

    def restart_engine(self) -> None:
        self.banner.hide()
        self.bridge.start(self.settings.backend_spec(), self.settings.model_label())

    def _engine_state(self, state: str, detail: str) -> None:
        if state == engine_bridge.LOADING:
            self.kv.hide()  # the old engine's pool is gone; statsChanged brings the new one's
            self.engine_label.setText(f"Loading {detail}…")
        elif state == engine_bridge.READY:
            self.banner.hide()  # the label and the KV picture follow with the first statsChanged
        elif state == engine_bridge.FAILED:
            self.kv.hide()
            self.engine_label.setText("No model loaded")
            self.banner.show_error(detail)

    def _engine_stats(self, stats: dict) -> None:
        if self.bridge.remote:  # its KV memory is not ours to see
            self.kv.hide()
            self.engine_label.setText(remote_status(self.bridge.detail, stats))
            return
        self.kv.show()
        self.kv.set_stats(stats)
        running, waiting = int(stats.get("num_running", 0)), int(stats.get("num_waiting", 0))
        hit = stats.get("prefix_hit_rate", 0.0)
        self.engine_label.setText(f"{self.bridge.detail} · {running} running · {waiting} waiting · "
                                  f"prefix hits {hit:.0%}")

    def open_settings(self) -> SettingsDialog:
        dialog = SettingsDialog(self.settings, self, gpu_present=getattr(self.bridge.backend, "device", "") == "cuda")
        dialog.accepted_settings.connect(self.apply_settings)
        dialog.finished.connect(lambda *_: setattr(self, "settings_dialog", None))
        dialog.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        self.settings_dialog = dialog
        self._show_loaded_in_settings()
        dialog.open()
        return dialog

    def _show_loaded_in_settings(self) -> None:
        """The open dialog's "Loaded now": the model's formats, KV cache and context, as the
        backend read them at load (nothing waits), kept current while a reload runs."""
        if self.settings_dialog is None:
            return
        backend = self.bridge.backend
        info = backend.model_info() if backend is not None and self.bridge.state == engine_bridge.READY else {}
        self.settings_dialog.show_loaded(self.bridge.state, self.bridge.detail, self.bridge.remote, info)

    def apply_settings(self, settings: Settings) -> None:
        old, self.settings = self.settings, settings
        self._saved = self._without_run_overrides(settings)
        save_settings(self.data_dir, self._saved)
        if settings.theme != old.theme:
            apply_theme(QApplication.instance(), settings.theme)
            self._redraw_messages()
        if settings.backend_spec() != old.backend_spec():
            self.restart_engine()

    def _without_run_overrides(self, settings: Settings) -> Settings:
        """What to save: a command-line option whose fields the user left alone keeps the saved
        values; one the user changed is theirs from now on (and no longer an override)."""
        self._run_overrides = [group for group in self._run_overrides
                               if all(getattr(settings, k) == v for k, v in group.items())]
        return replace(settings, **{k: getattr(self._saved, k) for group in self._run_overrides for k in group})

    def set_theme(self, name: str) -> None:
        self.apply_settings(replace(self.settings, theme=name))

    def _redraw_messages(self) -> None:
        """Code-block tints and legend swatches are drawn in theme colours: redraw them."""
        for i in range(self.tabs.count()):
            for w in self.tabs.widget(i).widgets:
                w.refresh()
        self.kv.set_stats(self.bridge.last_stats)

    # ------------------------------------------------------------------ closing

    def closeEvent(self, event) -> None:
        """Save every chat now (an answer in progress as far as it got), then stop the engine and
        the library in the background: the window goes at once, `closed` fires when they have
        stopped (the app quits then), and `wait_closed` waits for it where no event loop runs."""
        if self._closed:  # already shut down (closed twice, e.g. by a test and its teardown)
            super().closeEvent(event)
            return
        self._closed = True
        self._save_order()
        for session in list(self.sessions.values()) + list(self._closing):
            session.abandon()
        self.history.close()
        self.bridge.close()
        self.library.close(after=lambda: self.bridge.wait_closed(None))
        super().closeEvent(event)

    def wait_closed(self, timeout: float | None) -> bool:
        """After the window closed: True once the engine and the library have stopped, False if
        `timeout` seconds (each) passed first. Blocks: for after the event loop has ended."""
        return self.bridge.wait_closed(timeout) and self.library.wait_closed(timeout)

    def _part_closed(self, part) -> None:
        self._closing_parts.discard(part)
        if not self._closing_parts:
            self.closed.emit()
