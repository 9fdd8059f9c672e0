"""The settings dialog: model and device (or a remote server), memory, sampling, system prompt, theme,
and what the loaded model holds: its weights' formats (its quantization), KV cache and context.

It edits a copy and hands back a new `Settings` on OK; the window decides what changing it means
(a new engine for a new model, device or memory setting, a new theme now, sampling from the next
answer on). The window also tells it what is loaded (`show_loaded`), now and whenever that changes.
"""
from __future__ import annotations

import logging
from dataclasses import replace

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (QComboBox, QDialog, QDialogButtonBox, QDoubleSpinBox, QFileDialog, QFormLayout,
                               QGroupBox, QHBoxLayout, QLabel, QLineEdit, QPlainTextEdit, QPushButton, QSpinBox,
                               QVBoxLayout, QWidget)

from app import sampling, wording
from app.backends import is_user_error, user_message
from app.backends.choice import DISK_KV_CACHE
from app.gui import heavy_imports
from app.gui.background import Background
from app.gui.engine_bridge import LOADING, READY
from app.gui.settings import DEVICES, LOCAL_FILE_SOURCES, THEMES, Preset, Settings, load_presets
from engine.memory import parse_size

log = logging.getLogger(__name__)
HOST_KV_DEFAULT = "1.0 GiB"  # EngineConfig.host_kv_cache's default, said without importing torch

CUSTOM = "Custom"
_SOURCES = [("bundled", "Bundled (SmolLM2-135M-Instruct)"), ("folder", "Hugging Face folder"), ("gguf", "GGUF file"),
            ("remote", "Remote server (OpenAI-compatible)")]
_KV_DTYPES = [("auto", "Model's dtype"), ("fp8", "fp8 (twice the tokens per byte)")]
_QUANTIZATIONS = [("none", "None (as the folder stores them)"), ("int8", "int8 (about half of bf16)"),
                  ("int4", "int4 (about a third of bf16)")]
CONNECTION_TEST_TIMEOUT_S = 10.0
REMOTE_MEMORY = "Runs on the server: its quantization and memory are the server's, not Folio's to see."


class SettingsDialog(QDialog):
    accepted_settings = Signal(object)  # Settings

    def __init__(self, settings: Settings, parent: QWidget | None = None, gpu_present: bool = False) -> None:
        """`gpu_present`: whether "auto" runs on a GPU here (the KV memory fraction means nothing
        on the CPU, so it is shown only for a GPU)."""
        super().__init__(parent)
        self.setWindowTitle("Settings")
        self.setMinimumWidth(self.fontMetrics().averageCharWidth() * 80)  # "Loaded now" in a line or two, not four
        self.settings = settings
        self.gpu_present = gpu_present
        self._background = Background(self)
        self.presets: list[Preset] = load_presets()

        self.source = QComboBox()
        for key, label in _SOURCES:
            self.source.addItem(label, key)
        self.path = QLineEdit(settings.model_path)
        self.path.setPlaceholderText("folder with config.json and .safetensors, or a .gguf file")
        self.browse = QPushButton("Browse…")
        self.browse.clicked.connect(self._browse)
        path_row = QHBoxLayout()
        path_row.setContentsMargins(0, 0, 0, 0)
        path_row.addWidget(self.path, 1)
        path_row.addWidget(self.browse)
        self.remote_url = QLineEdit(settings.remote_url)
        self.remote_url.setPlaceholderText("http://host:8000/v1")
        self.remote_key = QLineEdit(settings.remote_key)
        self.remote_key.setEchoMode(QLineEdit.EchoMode.Password)
        self.remote_key.setPlaceholderText("none")
        self.remote_model = QLineEdit(settings.remote_model)
        self.remote_model.setPlaceholderText("the server's first model")
        self.test_button = QPushButton("Test connection")
        self.test_button.clicked.connect(self.test_connection)
        self.test_result = QLabel()
        self.test_result.setWordWrap(True)
        self.test_result.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.testing = False
        self.device = QComboBox()
        self.device.addItems(list(DEVICES))
        self.context = QSpinBox()
        self.context.setRange(0, 1 << 20)
        self.context.setSingleStep(1024)
        self.context.setSpecialValueText("as long as the model allows")
        self.kv_fraction = QDoubleSpinBox()
        self.kv_fraction.setRange(0.05, 1.0)
        self.kv_fraction.setSingleStep(0.05)
        self.kv_fraction.setToolTip("Share of the GPU memory left after the weights that holds the KV cache "
                                    "(a GPU memory limit, when set, sizes it instead)")
        self.memory_limit = QLineEdit(settings.gpu_memory_limit)
        self.memory_limit.setPlaceholderText("no limit (e.g. 8GiB)")
        self.memory_limit.setToolTip("Everything the engine allocates on the GPU stays inside this: weights, "
                                     "KV cache, working memory. A model that cannot fit is refused with what it needs.")
        self.kv_dtype = QComboBox()
        for key, label in _KV_DTYPES:
            self.kv_dtype.addItem(label, key)
        self.kv_dtype.setToolTip("fp8 holds twice the tokens of context in the same memory, at a small cost in quality")
        self.kv_in_ram = QLineEdit(settings.host_kv_cache)
        self.kv_in_ram.setToolTip("KV blocks pushed off the device are kept in this much RAM, so a chat that comes "
                                  "back to them reads them instead of computing them again. 0 keeps none.")
        self.kv_in_ram.setPlaceholderText(f"{HOST_KV_DEFAULT} (default); 0 for none")  # on a GPU too (pinned)
        self.kv_on_disk = QLineEdit(settings.disk_kv_cache)
        self.kv_on_disk.setPlaceholderText(f"{wording.size_text(parse_size(DISK_KV_CACHE))} (default); 0 for none")
        self.kv_on_disk.setToolTip("The KV blocks of long prompts (documents) are also kept on disk, up to this much "
                                   "per model, so a document is read once, even after a restart. They are read "
                                   "through RAM: this needs KV kept in RAM.")
        self.quantization = QComboBox()
        for key, label in _QUANTIZATIONS:
            self.quantization.addItem(label, key)
        self.quantization.setToolTip("Quantize a Hugging Face folder's weights when loading it, so that it needs "
                                     "less memory (a GGUF file keeps its own quantization)")

        self.temperature = QDoubleSpinBox()
        self.temperature.setRange(0.0, 2.0)
        self.temperature.setSingleStep(0.1)
        self.temperature.setToolTip("0 always picks the likeliest word (greedy)")
        self.top_p = QDoubleSpinBox()
        self.top_p.setRange(0.01, 1.0)
        self.top_p.setSingleStep(0.05)
        self.max_tokens = QSpinBox()
        self.max_tokens.setRange(1, 1 << 16)
        self.repetition_penalty = QDoubleSpinBox()
        self.repetition_penalty.setRange(*sampling.REPETITION_PENALTY_RANGE)
        self.repetition_penalty.setSingleStep(0.05)
        self.repetition_penalty.setToolTip(f"Above 1 keeps small models from repeating themselves; 1 is off "
                                           f"(default {sampling.REPETITION_PENALTY:g})")
        self.preset = QComboBox()
        self.preset.addItems([p.name for p in self.presets] + [CUSTOM])
        self.system = QPlainTextEdit()
        self.system.setTabChangesFocus(True)
        self.system.setPlaceholderText("Folio's default: a helpful assistant that cites your documents")
        self.theme = QComboBox()
        self.theme.addItems(list(THEMES))

        model_box = QGroupBox("Model")
        model_form = QFormLayout(model_box)
        model_form.addRow("&Model:", self.source)
        path_label = QLabel("&Path:")
        path_label.setBuddy(self.path)  # a row holding a layout gets no buddy by itself
        model_form.addRow(path_label, path_row)
        model_form.addRow("Server &URL:", self.remote_url)
        model_form.addRow("API ke&y:", self.remote_key)
        model_form.addRow("Model &name:", self.remote_model)
        model_form.addRow(self.test_button, self.test_result)
        model_form.addRow("&Device:", self.device)
        model_form.addRow("&Context length:", self.context)
        model_form.addRow("&KV memory fraction:", self.kv_fraction)
        model_form.addRow("GPU memory &limit:", self.memory_limit)
        model_form.addRow("KV cache pr&ecision:", self.kv_dtype)
        model_form.addRow("KV kept in R&AM, at most:", self.kv_in_ram)
        model_form.addRow("KV kept on di&sk, at most:", self.kv_on_disk)
        model_form.addRow("&Quantize at load:", self.quantization)
        self._model_form = model_form
        self._local_rows = [path_row, self.device, self.context, self.kv_dtype, self.kv_in_ram, self.kv_on_disk]
        self._remote_rows = [self.remote_url, self.remote_key, self.remote_model, self.test_result]
        note = QLabel("Changing these reloads the model in the background.")
        note.setObjectName("hint")
        model_form.addRow(note)
        loaded_box = QGroupBox("Loaded now")
        self._loaded_form = QFormLayout(loaded_box)
        self.loaded_model, self.loaded_weights, self.loaded_kv, self.loaded_limit = (_info_label() for _ in range(4))
        self._loaded_form.addRow("Model:", self.loaded_model)
        self._loaded_form.addRow("Weights:", self.loaded_weights)
        self._loaded_form.addRow("KV cache:", self.loaded_kv)
        self._loaded_form.addRow("GPU memory limit:", self.loaded_limit)
        self.disk_kv = _info_label()
        self.disk_kv.setText("blocks of long prompts, so that documents are read once")
        self.show_disk_kv = QPushButton("Show")
        self.show_disk_kv.setToolTip("Count the KV blocks kept on disk")
        self.show_disk_kv.clicked.connect(self.refresh_kv_on_disk)
        self.clear_disk_kv = QPushButton("Clear")
        self.clear_disk_kv.setToolTip("Delete the KV blocks kept on disk (documents are then read again once)")
        self.clear_disk_kv.clicked.connect(self.clear_kv_on_disk)
        disk_buttons = QHBoxLayout()  # under the text, which wraps: beside it, its last line was cut off
        disk_buttons.setContentsMargins(0, 0, 0, 0)
        disk_buttons.addWidget(self.show_disk_kv)
        disk_buttons.addWidget(self.clear_disk_kv)
        disk_buttons.addStretch(1)
        self._loaded_form.addRow("KV kept on disk:", self.disk_kv)
        self._loaded_form.addRow("", disk_buttons)
        gen_box = QGroupBox("Answers")
        gen_form = QFormLayout(gen_box)
        gen_form.addRow("&Temperature:", self.temperature)
        gen_form.addRow("Top-&p:", self.top_p)
        gen_form.addRow("Max &tokens:", self.max_tokens)
        gen_form.addRow("&Repetition penalty:", self.repetition_penalty)
        gen_form.addRow("System &prompt:", self.preset)
        gen_form.addRow(self.system)
        look_box = QGroupBox("Appearance")
        look_form = QFormLayout(look_box)
        look_form.addRow("T&heme:", self.theme)

        self.problem = QLabel()
        self.problem.setObjectName("errorText")
        self.problem.setWordWrap(True)
        self.problem.hide()
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel)
        buttons.accepted.connect(self._accept)
        buttons.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        for w in (model_box, loaded_box, gen_box, look_box, self.problem, buttons):
            layout.addWidget(w)

        self._load(settings)
        self.source.currentIndexChanged.connect(self._update_source)
        self.device.currentIndexChanged.connect(self._update_source)
        self.memory_limit.textChanged.connect(self._update_source)
        self.preset.currentIndexChanged.connect(self._preset_chosen)
        self.system.textChanged.connect(self._system_edited)
        self._update_source()
        self.show_loaded("", "", False, {})

    def _load(self, s: Settings) -> None:
        self.source.setCurrentIndex(self.source.findData(s.model_source))
        self.device.setCurrentText(s.device)
        self.context.setValue(s.max_model_len)
        self.kv_fraction.setValue(s.kv_memory_fraction)
        self.memory_limit.setText(s.gpu_memory_limit)
        self.kv_dtype.setCurrentIndex(max(0, self.kv_dtype.findData(s.kv_cache_dtype)))
        self.kv_in_ram.setText(s.host_kv_cache)
        self.kv_on_disk.setText(s.disk_kv_cache)
        self.quantization.setCurrentIndex(max(0, self.quantization.findData(s.quantization)))
        self.temperature.setValue(s.temperature)
        self.top_p.setValue(s.top_p)
        self.max_tokens.setValue(s.max_tokens)
        self.repetition_penalty.setValue(s.repetition_penalty)
        names = [p.name for p in self.presets]
        self.preset.setCurrentText(s.system_preset if s.system_preset in names else CUSTOM)
        self.system.setPlainText(s.system_prompt or "")
        self.theme.setCurrentText(s.theme)

    def result_settings(self) -> Settings:
        preset = self.preset.currentText()
        text = self.system.toPlainText()
        chosen = next((p for p in self.presets if p.name == preset), None)
        system = chosen.text if chosen is not None else text
        return replace(self.settings, model_source=self.source.currentData(), model_path=self.path.text().strip(),
                       remote_url=self.remote_url.text().strip(), remote_key=self.remote_key.text().strip(),
                       remote_model=self.remote_model.text().strip(),
                       device=self.device.currentText(), max_model_len=self.context.value(),
                       kv_memory_fraction=round(self.kv_fraction.value(), 2),
                       gpu_memory_limit=self.memory_limit.text().strip(), kv_cache_dtype=self.kv_dtype.currentData(),
                       host_kv_cache=self.kv_in_ram.text().strip(), disk_kv_cache=self.kv_on_disk.text().strip(),
                       quantization=self.quantization.currentData(), temperature=self.temperature.value(),
                       top_p=self.top_p.value(), max_tokens=self.max_tokens.value(),
                       repetition_penalty=round(self.repetition_penalty.value(), 2), system_preset=preset,
                       system_prompt=system, theme=self.theme.currentText())

    def _accept(self) -> None:
        settings = self.result_settings()
        problems = settings.problems()
        if problems:
            text = "; ".join(problems)
            self.problem.setText(text[0].upper() + text[1:] + ".")  # not capitalize(): it lowercases "URL"
            self.problem.show()
            return
        self.accepted_settings.emit(settings)
        self.accept()

    def _update_source(self) -> None:
        """A remote server shows its URL, key and model; the local engine's rows are for the others."""
        source = self.source.currentData()
        for row in self._local_rows:
            self._model_form.setRowVisible(row, source != "remote")
        for row in self._remote_rows:
            self._model_form.setRowVisible(row, source == "remote")
        device = self.device.currentText()
        on_gpu = device == "cuda" or (device == "auto" and self.gpu_present)
        self._model_form.setRowVisible(self.kv_fraction, source != "remote" and on_gpu)
        self._model_form.setRowVisible(self.memory_limit, source != "remote" and on_gpu)
        self._model_form.setRowVisible(self.quantization, source == "folder")
        self.kv_fraction.setEnabled(not self.memory_limit.text().strip())  # a limit sizes the KV pool itself
        self.path.setEnabled(source in LOCAL_FILE_SOURCES)
        self.browse.setEnabled(source in LOCAL_FILE_SOURCES)

    # ------------------------------------------------------------------ what is loaded now

    def show_loaded(self, state: str, description: str, remote: bool, info: dict) -> None:
        """What the window's backend holds: `state` and `description` as the engine bridge says
        them, `info` its `model_info()` (read once at load: nothing here waits)."""
        if state == READY:
            self.loaded_model.setText(description)
        elif state == LOADING:
            self.loaded_model.setText(f"Loading {description}…" if description else "Loading…")
        else:
            self.loaded_model.setText("No model loaded")
        local = state == READY and bool(info)
        self.loaded_weights.setText(wording.weights_summary(info) if local else
                                    REMOTE_MEMORY if state == READY and remote else "")
        self.loaded_kv.setText(wording.kv_summary(info) if local else "")
        limit = wording.memory_limit_summary(info) if local else None
        self.loaded_limit.setText(limit or "")
        self._loaded_form.setRowVisible(self.loaded_weights, local or (state == READY and remote))
        self._loaded_form.setRowVisible(self.loaded_kv, local)
        self._loaded_form.setRowVisible(self.loaded_limit, limit is not None)

    # ------------------------------------------------------------------ the KV cache on disk

    def refresh_kv_on_disk(self) -> None:
        """What `folio cache --stats` says, read off the GUI thread (a large cache is many files),
        when asked: not on every opening of the dialog."""
        self.disk_kv.setText("…")
        self._background.run(_kv_on_disk, self.disk_kv.setText, self._kv_on_disk_failed, name="folio-kv-disk")

    def clear_kv_on_disk(self) -> None:
        self.clear_disk_kv.setEnabled(False)
        self.disk_kv.setText("Clearing…")
        self._background.run(_clear_kv_on_disk, self._kv_on_disk_cleared, self._kv_on_disk_failed,
                             name="folio-kv-disk")

    def _kv_on_disk_cleared(self, text: str) -> None:
        self.clear_disk_kv.setEnabled(True)
        self.disk_kv.setText(text)

    def _kv_on_disk_failed(self, error: Exception) -> None:
        self.clear_disk_kv.setEnabled(True)
        self.disk_kv.setText(user_message(error))

    # ------------------------------------------------------------------ "Test connection"

    def test_connection(self) -> None:
        """Ask the server for its models off the GUI thread; the dialog may close meanwhile."""
        if self.testing:
            return
        spec = self.result_settings().backend_spec()
        self.testing = True
        self.test_button.setEnabled(False)
        self._show_test_result("Connecting…", failed=False)
        self._background.run(lambda: _connection_test(spec.url, spec.api_key, spec.model), self._tested,
                             self._test_failed, name="folio-connection-test")

    def _tested(self, line: str) -> None:
        self._test_ended(line, failed=False)

    def _test_failed(self, error: Exception) -> None:
        if not is_user_error(error):
            log.error("testing the connection failed", exc_info=error)
        self._test_ended(user_message(error), failed=True)

    def _test_ended(self, text: str, failed: bool) -> None:
        self.testing = False
        self.test_button.setEnabled(True)
        self._show_test_result(text, failed)

    def _show_test_result(self, text: str, failed: bool) -> None:
        self.test_result.setText(text)
        self.test_result.setObjectName("errorText" if failed else "hint")
        self.test_result.style().unpolish(self.test_result)  # the style sheet colours by object name
        self.test_result.style().polish(self.test_result)

    def _preset_chosen(self) -> None:
        chosen = next((p for p in self.presets if p.name == self.preset.currentText()), None)
        if chosen is not None:
            self.system.blockSignals(True)
            self.system.setPlainText(chosen.text or "")
            self.system.blockSignals(False)

    def _system_edited(self) -> None:
        self.preset.blockSignals(True)
        self.preset.setCurrentText(CUSTOM)
        self.preset.blockSignals(False)

    def _browse(self) -> None:
        dialog = QFileDialog(self, "Choose a model")
        if self.source.currentData() == "folder":
            dialog.setFileMode(QFileDialog.FileMode.Directory)
        else:
            dialog.setFileMode(QFileDialog.FileMode.ExistingFile)
            dialog.setNameFilter("GGUF models (*.gguf)")
        dialog.fileSelected.connect(self.path.setText)
        dialog.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        dialog.open()


def _info_label() -> QLabel:
    label = QLabel()
    label.setWordWrap(True)
    label.setTextFormat(Qt.TextFormat.PlainText)  # a model's name is the user's file name, never markup
    label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
    return label


def _connection_test(url: str, key: str | None, model: str | None) -> str:
    heavy_imports.ensure()  # not while another worker imports torch and transformers
    from app.backends.remote import test_connection
    return test_connection(url, key, model, CONNECTION_TEST_TIMEOUT_S)


def _kv_on_disk() -> str:
    from engine.cache_dir import kv_cache_root
    from engine.kv_tiers.disk_store import usage
    found = usage(kv_cache_root())
    files, nbytes = sum(u.files for u in found), sum(u.bytes for u in found)
    if not files:
        return "nothing yet (long prompts' blocks are kept here, so documents are read once)"
    return f"{wording.plural(files, 'block')}, {wording.size_text(nbytes)}, {wording.plural(len(found), 'model')}"


def _clear_kv_on_disk() -> str:
    from engine.cache_dir import kv_cache_root
    from engine.kv_tiers.disk_store import clear
    files, nbytes = clear(kv_cache_root())
    return f"cleared: {wording.plural(files, 'block')}, {wording.size_text(nbytes)}"
