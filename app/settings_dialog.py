"""The settings dialog: model and device, memory, sampling, system prompt, theme.

It edits a copy and hands back a new `Settings` on OK; the window decides what changing it means
(a new engine for a new model or device, a new theme now, sampling from the next answer on).
"""
from __future__ import annotations

from dataclasses import replace

from PySide6.QtCore import Signal
from PySide6.QtWidgets import (QComboBox, QDialog, QDialogButtonBox, QDoubleSpinBox, QFileDialog, QFormLayout,
                               QGroupBox, QHBoxLayout, QLabel, QLineEdit, QPlainTextEdit, QPushButton, QSpinBox,
                               QVBoxLayout, QWidget)

from app.settings import DEVICES, THEMES, Preset, Settings, load_presets

CUSTOM = "Custom"
_SOURCES = [("bundled", "Bundled (SmolLM2-135M-Instruct)"), ("folder", "Hugging Face folder"), ("gguf", "GGUF file")]


class SettingsDialog(QDialog):
    accepted_settings = Signal(object)  # Settings

    def __init__(self, settings: Settings, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Settings")
        self.settings = settings
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
        self.device = QComboBox()
        self.device.addItems(list(DEVICES))
        self.context = QSpinBox()
        self.context.setRange(0, 1 << 20)
        self.context.setSingleStep(1024)
        self.context.setSpecialValueText("as long as the model allows")
        self.kv_fraction = QDoubleSpinBox()
        self.kv_fraction.setRange(0.05, 1.0)
        self.kv_fraction.setSingleStep(0.05)
        self.kv_fraction.setToolTip("Share of the GPU memory left after the weights that holds the KV cache")

        self.temperature = QDoubleSpinBox()
        self.temperature.setRange(0.0, 2.0)
        self.temperature.setSingleStep(0.1)
        self.temperature.setToolTip("0 always picks the likeliest word (greedy)")
        self.top_p = QDoubleSpinBox()
        self.top_p.setRange(0.01, 1.0)
        self.top_p.setSingleStep(0.05)
        self.max_tokens = QSpinBox()
        self.max_tokens.setRange(1, 1 << 16)
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
        model_form.addRow("&Device:", self.device)
        model_form.addRow("&Context length:", self.context)
        model_form.addRow("&KV memory fraction:", self.kv_fraction)
        note = QLabel("Changing these reloads the model in the background.")
        note.setObjectName("hint")
        model_form.addRow(note)
        gen_box = QGroupBox("Answers")
        gen_form = QFormLayout(gen_box)
        gen_form.addRow("&Temperature:", self.temperature)
        gen_form.addRow("Top-&p:", self.top_p)
        gen_form.addRow("Max &tokens:", self.max_tokens)
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
        for w in (model_box, gen_box, look_box, self.problem, buttons):
            layout.addWidget(w)

        self._load(settings)
        self.source.currentIndexChanged.connect(self._update_path)
        self.preset.currentIndexChanged.connect(self._preset_chosen)
        self.system.textChanged.connect(self._system_edited)
        self._update_path()

    def _load(self, s: Settings) -> None:
        self.source.setCurrentIndex(self.source.findData(s.model_source))
        self.device.setCurrentText(s.device)
        self.context.setValue(s.max_model_len)
        self.kv_fraction.setValue(s.kv_memory_fraction)
        self.temperature.setValue(s.temperature)
        self.top_p.setValue(s.top_p)
        self.max_tokens.setValue(s.max_tokens)
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
                       device=self.device.currentText(), max_model_len=self.context.value(),
                       kv_memory_fraction=round(self.kv_fraction.value(), 2), temperature=self.temperature.value(),
                       top_p=self.top_p.value(), max_tokens=self.max_tokens.value(), system_preset=preset,
                       system_prompt=system, theme=self.theme.currentText())

    def _accept(self) -> None:
        settings = self.result_settings()
        problems = settings.problems()
        if problems:
            self.problem.setText("; ".join(problems).capitalize() + ".")
            self.problem.show()
            return
        self.accepted_settings.emit(settings)
        self.accept()

    def _update_path(self) -> None:
        external = self.source.currentData() != "bundled"
        self.path.setEnabled(external)
        self.browse.setEnabled(external)

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
        dialog.open()
