"""A model's quantization and memory in the app: the Settings fields for a GPU memory limit, the KV
cache's precision and quantizing a folder at load (saved, validated, passed to the engine, and a
reason to reload it), the dialog's "Loaded now" for the real bundled model, and the status bar's
KV picture counted in tokens of context."""
from __future__ import annotations

import json
from dataclasses import asdict, replace

import pytest
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QLabel

from app.backends import LocalSpec
from app.backends.remote import RemoteBackend
from app.gui import engine_bridge
from app.gui.engine_bridge import LOADING, READY
from app.gui.kv_bar import KvIndicator
from app.gui.messages import AnswerStats
from app.gui.settings import Settings, load_settings, save_settings
from app.gui.settings_dialog import HOST_KV_DEFAULT, REMOTE_MEMORY, SettingsDialog
from app.paths import settings_path
from app.wording import memory_summary, size_text
from app_fixtures import KV_BLOCKS, make_window, shared_backend  # noqa: F401 (fixtures)
from app_fixtures import settings, type_and_send, wait_answer
from engine.config import EngineConfig

TIMEOUT_MS = 120_000
GIB = 1 << 30


# ---------------------------------------------------------------------------------- settings

def test_memory_settings_round_trip_and_reach_the_engine_config(tmp_path):
    from engine import EngineConfig

    chosen = Settings(model_source="folder", model_path="/models/llama", gpu_memory_limit="8GiB",
                      kv_cache_dtype="fp8", quantization="int4")
    save_settings(tmp_path, chosen)
    assert load_settings(tmp_path) == chosen
    spec = chosen.backend_spec()
    assert spec == LocalSpec.of("/models/llama", "auto", gpu_memory_limit=8 * GIB, kv_cache_dtype="fp8",
                                quantization="int4")  # the limit sizes the KV pool: no fraction
    config = EngineConfig(device="cpu", **dict(spec.config))  # what EngineThread(model, **config) builds
    assert (config.gpu_memory_limit, config.kv_cache_dtype, config.quantization) == (8 * GIB, "fp8", "int4")

    # every field that changes the engine changes the choice, so the window reloads the model
    for change in (dict(gpu_memory_limit="6GiB"), dict(gpu_memory_limit=""), dict(kv_cache_dtype="auto"),
                   dict(quantization="int8"), dict(quantization="none")):
        assert replace(chosen, **change).backend_spec() != spec, change
    # and nothing that leaves it as it is
    assert replace(chosen, gpu_memory_limit=" 8 GiB ").backend_spec() == spec
    assert replace(chosen, kv_memory_fraction=0.5).backend_spec() == spec  # under a limit it means nothing
    on_cpu = replace(chosen, device="cpu")
    assert dict(on_cpu.backend_spec().config) == {"kv_cache_dtype": "fp8", "quantization": "int4"}
    # a GGUF file (and the bundled one) keeps its own quantization: the engine would refuse "int4"
    assert "quantization" not in dict(replace(chosen, model_source="gguf", model_path="/m.gguf").backend_spec().config)
    assert "quantization" not in dict(replace(chosen, model_source="bundled").backend_spec().config)
    assert Settings().backend_spec() == LocalSpec.of(None, "auto", kv_memory_fraction=0.85)


def test_a_hand_edited_bad_memory_setting_falls_back_alone(tmp_path):
    save_settings(tmp_path, Settings(temperature=0.2, gpu_memory_limit="4GiB", kv_cache_dtype="fp8"))
    raw = json.loads(settings_path(tmp_path).read_text())
    raw.update(gpu_memory_limit="lots", kv_cache_dtype="fp4", quantization="int3")
    settings_path(tmp_path).write_text(json.dumps(raw))
    loaded = load_settings(tmp_path)
    assert (loaded.gpu_memory_limit, loaded.kv_cache_dtype, loaded.quantization) == ("", "auto", "none")
    assert loaded.temperature == 0.2  # the rest of the file is kept


@pytest.mark.parametrize("text, why", [("lots", "must look like '8GiB'"), ("0", "must be positive"),
                                       ("8 parsecs", "must look like '8GiB'")])
def test_a_bad_memory_limit_is_named_in_words(text, why):
    problems = Settings(gpu_memory_limit=text).problems()
    assert len(problems) == 1 and problems[0].startswith("GPU memory limit:") and why in problems[0]
    assert repr(text) in problems[0] and "empty for no limit" in problems[0]
    with pytest.raises(ValueError):
        Settings(gpu_memory_limit=text).backend_spec()


def test_the_dialog_offers_each_memory_field_where_it_applies(qtbot):
    dialog = SettingsDialog(Settings(device="cpu"))
    qtbot.addWidget(dialog)
    dialog.show()
    assert dialog.kv_dtype.isVisible()          # fp8 KV works on the CPU too
    assert not dialog.memory_limit.isVisible()  # a GPU limit means nothing on the CPU
    assert not dialog.quantization.isVisible()  # the bundled GGUF keeps its own types
    dialog.device.setCurrentText("cuda")
    assert dialog.memory_limit.isVisible() and dialog.kv_fraction.isEnabled()
    dialog.memory_limit.setText("8GiB")
    assert not dialog.kv_fraction.isEnabled()   # the limit sizes the KV pool itself
    dialog.source.setCurrentIndex(dialog.source.findData("folder"))
    assert dialog.quantization.isVisible()
    dialog.source.setCurrentIndex(dialog.source.findData("gguf"))
    assert not dialog.quantization.isVisible()
    dialog.source.setCurrentIndex(dialog.source.findData("remote"))
    assert not (dialog.kv_dtype.isVisible() or dialog.memory_limit.isVisible() or dialog.quantization.isVisible())

    dialog.source.setCurrentIndex(dialog.source.findData("folder"))
    dialog.path.setText("/models/llama")
    dialog.kv_dtype.setCurrentIndex(dialog.kv_dtype.findData("fp8"))
    dialog.quantization.setCurrentIndex(dialog.quantization.findData("int8"))
    chosen = dialog.result_settings()
    assert (chosen.gpu_memory_limit, chosen.kv_cache_dtype, chosen.quantization) == ("8GiB", "fp8", "int8")
    again = SettingsDialog(chosen)  # and a saved choice comes back into the fields
    qtbot.addWidget(again)
    assert again.result_settings() == chosen


def test_a_bad_memory_limit_is_refused_in_the_dialog_and_nothing_is_lost(qtbot, make_window, tmp_path):
    data = tmp_path / "data"
    window = make_window(data_dir=data, settings=settings(device="cuda", gpu_memory_limit="6GiB"))
    dialog = window.open_settings()
    assert dialog.memory_limit.isVisible() and dialog.memory_limit.text() == "6GiB"
    dialog.memory_limit.setText("lots")
    dialog.temperature.setValue(0.5)
    with qtbot.assertNotEmitted(dialog.accepted_settings):
        qtbot.mouseClick(_ok_button(dialog), Qt.MouseButton.LeftButton)
    assert dialog.isVisible() and dialog.problem.isVisible()
    assert dialog.problem.text().startswith("GPU memory limit: a memory size must look like '8GiB'")
    assert dialog.memory_limit.text() == "lots" and dialog.temperature.value() == 0.5  # the edits stay
    assert window.settings.gpu_memory_limit == "6GiB" and window.settings.temperature == 0.0
    assert not settings_path(data).exists()  # nothing saved

    dialog.memory_limit.setText("6 GiB")  # the same limit, written another way: no reload
    with qtbot.assertNotEmitted(window.bridge.stateChanged):
        qtbot.mouseClick(_ok_button(dialog), Qt.MouseButton.LeftButton)
    assert not dialog.isVisible()
    assert window.settings.gpu_memory_limit == "6 GiB" and window.settings.temperature == 0.5
    assert load_settings(data).gpu_memory_limit == "6 GiB"


# ---------------------------------------------------------------------------------- the KV tiers' sizes

def test_the_kv_tier_sizes_round_trip_and_reach_the_engine_config(tmp_path):
    from engine import EngineConfig

    chosen = Settings(device="cpu", host_kv_cache="512MiB", disk_kv_cache="8 GiB")
    save_settings(tmp_path, chosen)
    assert load_settings(tmp_path) == chosen
    spec = chosen.backend_spec()
    assert dict(spec.config) == {"host_kv_cache": 512 << 20, "disk_kv_cache": 8 * GIB}
    config = EngineConfig(device="cpu", **dict(spec.config))
    assert (config.host_kv_cache, config.disk_kv_cache) == (512 << 20, 8 * GIB)
    for change in (dict(host_kv_cache="1GiB"), dict(host_kv_cache=""), dict(disk_kv_cache="0"),
                   dict(disk_kv_cache="")):
        assert replace(chosen, **change).backend_spec() != spec, change  # a reason to reload
    assert replace(chosen, host_kv_cache="0.5 GiB", disk_kv_cache="8GiB").backend_spec() == spec

    # unset: the defaults, as before the fields existed (the engine's RAM tier, the app's disk tier)
    assert "host_kv_cache" not in dict(Settings().backend_spec().config)
    assert "disk_kv_cache" not in dict(Settings().backend_spec().config)
    # no RAM: the default disk tier, which reads through it, goes too (the engine refuses one without the other)
    no_ram = dict(Settings(device="cpu", host_kv_cache="0").backend_spec().config)
    assert no_ram == {"host_kv_cache": 0, "disk_kv_cache": 0}
    assert EngineConfig(device="cpu", **no_ram).disk_kv_cache == 0


@pytest.mark.parametrize("changes, why", [
    (dict(host_kv_cache="lots"), "KV kept in RAM: a memory size must look like '8GiB' or '7.5 GB', got 'lots'"),
    (dict(disk_kv_cache="-3GiB"), "KV kept on disk: a size cannot be negative, got '-3GiB'"),
    (dict(disk_kv_cache="0 GiB"), "KV kept on disk: a memory size must be positive, got '0 GiB'"),
    (dict(host_kv_cache="0", disk_kv_cache="4GiB"), "KV kept on disk needs KV kept in RAM"),
])
def test_a_bad_kv_tier_size_is_named_in_words(changes, why):
    problems = Settings(**changes).problems()
    assert len(problems) == 1 and problems[0].startswith(why), problems


def test_a_hand_edited_bad_kv_tier_size_falls_back_alone(tmp_path):
    save_settings(tmp_path, Settings(temperature=0.2, host_kv_cache="2GiB", disk_kv_cache="16GiB"))
    raw = json.loads(settings_path(tmp_path).read_text())
    raw.update(disk_kv_cache="a lot")
    settings_path(tmp_path).write_text(json.dumps(raw))
    loaded = load_settings(tmp_path)
    assert (loaded.host_kv_cache, loaded.disk_kv_cache, loaded.temperature) == ("2GiB", "", 0.2)


def test_a_bad_kv_tier_size_is_refused_in_the_dialog_and_nothing_changes(qtbot, make_window, tmp_path):
    data = tmp_path / "data"
    window = make_window(data_dir=data, settings=settings(device="cpu"))
    dialog = window.open_settings()
    assert dialog.kv_in_ram.isVisible() and dialog.kv_on_disk.isVisible()
    assert (dialog.kv_in_ram.text(), dialog.kv_on_disk.text()) == ("", "")  # the defaults, said in the placeholders
    assert dialog.kv_in_ram.placeholderText().startswith("1.0 GiB (default)")
    assert dialog.kv_on_disk.placeholderText().startswith("4.0 GiB (default)")
    on_gpu = SettingsDialog(settings(device="cuda"), gpu_present=True)  # the same defaults there (RAM pinned)
    assert HOST_KV_DEFAULT == size_text(EngineConfig(device="cpu").host_kv_cache)  # the hint says the engine's default
    assert (on_gpu.kv_in_ram.placeholderText(), on_gpu.kv_on_disk.placeholderText()) == (
        dialog.kv_in_ram.placeholderText(), dialog.kv_on_disk.placeholderText())
    on_gpu.deleteLater()
    for ram, disk, why in (("", "lots", "KV kept on disk: a memory size must look like"),
                           ("-3GiB", "", "KV kept in RAM: a size cannot be negative"),
                           ("0", "4GiB", "KV kept on disk needs KV kept in RAM")):
        dialog.kv_in_ram.setText(ram)
        dialog.kv_on_disk.setText(disk)
        with qtbot.assertNotEmitted(dialog.accepted_settings), qtbot.assertNotEmitted(window.bridge.stateChanged):
            qtbot.mouseClick(_ok_button(dialog), Qt.MouseButton.LeftButton)
        assert dialog.isVisible() and dialog.problem.isVisible() and dialog.problem.text().startswith(why)
        assert (dialog.kv_in_ram.text(), dialog.kv_on_disk.text()) == (ram, disk)  # the edits stay, to be fixed
    assert (window.settings.host_kv_cache, window.settings.disk_kv_cache) == ("", "")
    assert not settings_path(data).exists()  # nothing saved
    dialog.source.setCurrentIndex(dialog.source.findData("remote"))
    assert not (dialog.kv_in_ram.isVisible() or dialog.kv_on_disk.isVisible())  # the server's memory is its own
    dialog.reject()


def test_kv_tier_sizes_set_in_the_dialog_are_saved_and_the_reloaded_engine_has_them(qtbot, make_window, tmp_path,
                                                                                   monkeypatch):
    opened = []

    def open_small(spec):
        opened.append(spec)
        return open_backend(replace(spec, config=spec.config + (("num_kv_blocks", KV_BLOCKS),)))

    open_backend = engine_bridge.open_backend
    monkeypatch.setattr(engine_bridge, "open_backend", open_small)
    data = tmp_path / "data"
    window = make_window(data_dir=data, settings=settings(device="cpu"))
    dialog = window.open_settings()
    dialog.kv_in_ram.setText("64MiB")
    dialog.kv_on_disk.setText("128 MiB")
    qtbot.mouseClick(_ok_button(dialog), Qt.MouseButton.LeftButton)
    assert not dialog.isVisible() and window.bridge.state == LOADING  # the next load has them
    assert (load_settings(data).host_kv_cache, load_settings(data).disk_kv_cache) == ("64MiB", "128 MiB")
    qtbot.waitUntil(lambda: window.bridge.state == READY and "ram_blocks_total" in window.bridge.last_stats,
                    timeout=TIMEOUT_MS)
    assert [(dict(s.config)["host_kv_cache"], dict(s.config)["disk_kv_cache"]) for s in opened] == [(64 << 20, 128 << 20)]
    stats, info = window.bridge.last_stats, window.bridge.backend.model_info()
    assert stats["disk_bytes_total"] == 128 << 20
    assert stats["ram_blocks_total"] == (64 << 20) // (info["kv_bytes_per_token"] * 16)
    assert window.kv.legend.text().endswith(" · RAM 0 · disk 0")  # both tiers on, nothing kept yet


def _ok_button(dialog: SettingsDialog):
    from PySide6.QtWidgets import QDialogButtonBox
    return dialog.findChild(QDialogButtonBox).button(QDialogButtonBox.StandardButton.Ok)


# ---------------------------------------------------------------------------------- what is loaded

def _bundled_kv_bytes_per_token(itemsize: int) -> int:
    """K and V of every layer for one token, from the bundled model's own config.json."""
    from engine.loader import resolve_model
    cfg = json.loads((resolve_model(None).folder / "config.json").read_text())
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
    return 2 * cfg["num_hidden_layers"] * cfg["num_key_value_heads"] * head_dim * itemsize


def test_the_dialog_shows_the_bundled_models_formats_and_context(qtbot, make_window, shared_backend):
    window = make_window()
    dialog = window.open_settings()
    info = shared_backend.model_info()
    assert info["context_tokens"] == KV_BLOCKS * 16
    assert info["kv_bytes_per_token"] == _bundled_kv_bytes_per_token(4)  # fp32 on the CPU (conftest)
    assert dialog.loaded_model.text() == shared_backend.describe() == "SmolLM2-135M-Instruct.Q4_1 on cpu"
    # the CPU expands this small model's Q4_1 weights once at load, for speed
    assert dialog.loaded_weights.text() == (f"fp32 {size_text(info['weight_bytes'])} "
                                            "(the file's quantized weights, expanded at load for speed)")
    assert dialog.loaded_kv.text() == f"fp32, 45 KiB/token · {size_text(info['kv_bytes'])} · 4,096 tokens of context"
    assert not dialog.loaded_limit.isVisible()  # no GPU, no limit to speak of
    dialog.reject()


def test_choosing_an_fp8_kv_cache_reloads_the_engine_and_the_dialog_shows_it(qtbot, make_window, monkeypatch):
    """Dialog -> Settings -> spec -> the real engine -> its memory report -> the dialog. The engine
    is told to keep the file's weights packed (as a GPU does) and to keep a small pool."""
    from engine.loader import bundled_model_path

    opened = []

    def open_small(spec):
        opened.append(spec)
        return open_backend(replace(spec, config=spec.config + (("dequantize_weights", False),
                                                                ("num_kv_blocks", KV_BLOCKS))))

    open_backend = engine_bridge.open_backend
    monkeypatch.setattr(engine_bridge, "open_backend", open_small)
    window = make_window()
    dialog = window.open_settings()
    dialog.kv_dtype.setCurrentIndex(dialog.kv_dtype.findData("fp8"))
    qtbot.mouseClick(_ok_button(dialog), Qt.MouseButton.LeftButton)
    assert window.bridge.state == LOADING and window.settings.kv_cache_dtype == "fp8"

    dialog = window.open_settings()  # opened while loading: it follows the load
    assert dialog.loaded_model.text().startswith("Loading") and not dialog.loaded_kv.isVisible()
    qtbot.waitUntil(lambda: window.bridge.state == READY, timeout=TIMEOUT_MS)
    assert [dict(s.config).get("kv_cache_dtype") for s in opened] == ["fp8"]
    info = window.bridge.backend.model_info()
    assert info["kv_dtype"] == "float8_e4m3fn" and info["kv_bytes_per_token"] == _bundled_kv_bytes_per_token(1)
    assert dialog.loaded_kv.isVisible()
    assert dialog.loaded_kv.text().startswith("fp8, 11 KiB/token · ")
    assert dialog.loaded_kv.text().endswith(" · 4,096 tokens of context")
    # kept packed: the file's own types, about the file's size (its tensors plus a small header)
    weights = dialog.loaded_weights.text()
    assert weights.startswith("Q4_1 ") and "(packed)" in weights
    assert all(name in weights for name in info["weight_formats"] if name.startswith("Q"))
    assert info["weight_bytes"] <= 1.10 * bundled_model_path().stat().st_size
    assert weights.endswith(f" · {size_text(info['weight_bytes'])} in all")
    assert window.bridge.backend.describe() in dialog.loaded_model.text()

    type_and_send(qtbot, window.current_view(), "Hi!")  # and it answers
    assert wait_answer(qtbot, window.current_view()).content


def test_a_remote_models_memory_is_the_servers(qtbot, make_window, closed_port):
    remote = RemoteBackend(f"http://127.0.0.1:{closed_port}/v1", model="llama-3")  # asks nothing until used
    window = make_window(settings=settings(model_source="remote", remote_url=remote.base_url), backend=remote)
    assert remote.model_info() == {} and memory_summary(remote.model_info()) == ""
    dialog = window.open_settings()
    assert dialog.loaded_model.text() == f"llama-3 at {remote.base_url}"
    assert dialog.loaded_weights.text() == REMOTE_MEMORY
    assert not dialog.loaded_kv.isVisible() and not dialog.loaded_limit.isVisible()
    dialog.reject()
    remote.shutdown()


def test_the_memory_line_reads_as_a_person_would_say_it():
    info = {"model": "/m/llama.Q4_K_M.gguf", "device": "cuda", "dequantized": False, "kv_dtype": "bfloat16",
            "weight_formats": {"bfloat16": 1 << 20, "Q6_K": 160 << 20, "Q4_K": 612 << 20},
            "weight_bytes": 773 << 20, "kv_bytes_per_token": 36 << 10, "kv_bytes": 43 * GIB,
            "context_tokens": 1_234_567, "gpu_memory_limit": 8 * GIB, "quantization": None}
    assert memory_summary(info) == ("Q4_K 612 MiB · Q6_K 160 MiB (packed) · bf16 1.0 MiB · 773 MiB in all · "
                                    "KV bf16, 36 KiB/token · 43 GiB · 1,234,567 tokens of context · "
                                    "GPU memory limit 8.0 GiB")
    folder = {**info, "model": "/m/llama", "weight_formats": {"Q8_0": 1100 << 20}, "weight_bytes": 1100 << 20,
              "quantization": "int8", "gpu_memory_limit": None, "kv_dtype": "float8_e4m3fn"}
    assert memory_summary(folder).startswith("Q8_0 1.1 GiB (int8, quantized at load) · KV fp8, ")
    cpu = {**info, "model": "/m/SmolLM2.Q4_1.gguf", "device": "cpu", "dequantized": True,
           "weight_formats": {"bfloat16": 257 << 20, "float32": 1 << 20}, "int4_decode_bytes": 64 << 20,
           "weight_bytes": 322 << 20, "gpu_memory_limit": None}
    assert memory_summary(cpu).startswith(
        "bf16 257 MiB · fp32 1.0 MiB · a 4-bit copy for decoding 64 MiB · 322 MiB in all "
        "(the file's quantized weights, expanded at load for speed) · KV bf16, ")


# ---------------------------------------------------------------------------------- the KV picture

def test_the_kv_picture_counts_tokens_of_context(qtbot):
    kv = KvIndicator()
    qtbot.addWidget(kv)
    kv.set_stats({"blocks_total": 6000, "blocks_used": 230, "blocks_shared": 30, "blocks_cached": 70,
                  "blocks_free": 5770, "block_size": 16})
    legend = kv.legend.text()
    assert legend.startswith("3,680 of 96,000 tokens in use ")  # (30 shared + 200 used blocks) x 16
    for count, kind in (("480", "shared"), ("3,200", "used"), ("1,120", "cached"), ("91,200", "free")):
        assert f"</span> {count} {kind}" in legend
    tip = kv.toolTip().splitlines()
    assert tip[0] == "KV memory: 3,680 of 96,000 tokens in use" and tip[1] == "6,000 blocks of 16 tokens"
    assert "cached for reuse: 1,120 tokens (70 blocks)" in tip
    kv.set_stats({})  # before the first stats: an empty pool, not an error
    assert kv.legend.text().startswith("0 of 0 tokens in use")
    assert "RAM" not in kv.legend.text() and "disk" not in kv.legend.text()  # tiers off: not shown


def test_the_kv_picture_counts_what_ram_and_disk_keep(qtbot):
    kv = KvIndicator()
    qtbot.addWidget(kv)
    kv.set_stats({"blocks_total": 100, "blocks_used": 0, "blocks_cached": 10, "block_size": 16,
                  "ram_blocks_cached": 40, "ram_blocks_total": 2000, "disk_blocks_cached": 300,
                  "disk_blocks_total": 50000})
    assert kv.legend.text().endswith(" · RAM 640 · disk 4,800")
    tip = kv.toolTip().splitlines()
    assert tip[-2:] == ["kept in RAM for reuse: 640 tokens", "kept on disk for reuse: 4,800 tokens"]
    kv.set_stats({"blocks_total": 100, "block_size": 16, "ram_blocks_total": 2000})  # RAM on, disk off
    assert kv.legend.text().endswith(" · RAM 0")


def test_an_answers_line_says_which_prompt_tokens_came_from_ram_and_disk():
    stats = AnswerStats(0.25, 30.0, 12, 4200, 4096, "stop", ram_cached_tokens=1024, disk_cached_tokens=2048)
    assert stats.summary() == ("TTFT 0.25 s · 30.0 tok/s · 12 tokens · cached 4096/4200 prompt tokens · "
                               "1024 from RAM, 2048 from disk")
    assert AnswerStats.from_dict(asdict(stats)) == stats  # kept in the history as it was
    assert "from" not in AnswerStats(0.25, 30.0, 12, 4200, 4096, "stop").summary()


def test_the_status_bar_counts_the_engines_tokens(qtbot, make_window):
    window = make_window()
    qtbot.waitUntil(lambda: "max_model_len" in window.bridge.last_stats, timeout=10_000)
    assert f"of {KV_BLOCKS * 16:,} tokens in use" in window.kv.legend.text()  # 256 blocks of 16 tokens
    type_and_send(qtbot, window.current_view(), "Name three colours.")
    wait_answer(qtbot, window.current_view())
    # the finished answer's full blocks stay cached for a prefix hit, and are counted as tokens
    qtbot.waitUntil(lambda: window.bridge.last_stats.get("blocks_cached", 0) > 0, timeout=10_000)
    cached = int(window.bridge.last_stats["blocks_cached"]) * 16  # the picture redraws with each stats
    assert f"</span> {cached:,} cached" in window.kv.legend.text()
    assert f"cached for reuse: {cached:,} tokens" in window.kv.toolTip()


def test_the_dialog_shows_and_clears_the_kv_kept_on_disk(qtbot, tmp_path, monkeypatch):
    """What `folio cache --stats` counts, read in the background; Clear empties it."""
    from engine.kv_tiers.disk_store import INFO, SUFFIX
    monkeypatch.setenv("FOLIO_CACHE_DIR", str(tmp_path))
    model = tmp_path / "kv" / "0123abcd"
    model.mkdir(parents=True)
    (model / INFO).write_text(json.dumps({"model": "smol.gguf"}))
    for i in range(3):
        (model / f"{i:016x}{SUFFIX}").write_bytes(b"k" * 1024)
    dialog = SettingsDialog(Settings())
    qtbot.addWidget(dialog)
    assert dialog.disk_kv.text().startswith("blocks of long prompts")  # nothing is counted until asked
    dialog.show_disk_kv.click()
    qtbot.waitUntil(lambda: dialog.disk_kv.text().startswith("3 blocks"), timeout=10_000)
    assert dialog.disk_kv.text() == "3 blocks, 3.0 KiB, 1 model"
    dialog.clear_disk_kv.click()
    qtbot.waitUntil(lambda: dialog.disk_kv.text().startswith("cleared"), timeout=10_000)
    assert dialog.disk_kv.text() == "cleared: 3 blocks, 3.0 KiB" and not model.exists()
    dialog.refresh_kv_on_disk()
    qtbot.waitUntil(lambda: dialog.disk_kv.text().startswith("nothing yet"), timeout=10_000)


def test_the_kv_on_disk_line_is_shown_whole_however_it_wraps(qtbot):
    dialog = SettingsDialog(Settings())
    qtbot.addWidget(dialog)
    dialog.show()
    label = dialog.disk_kv
    for text in ("193 blocks, 68 MiB, 1 model",
                 "nothing yet (long prompts' blocks are kept here, so documents are read once)"):
        label.setText(text)
        dialog.adjustSize()
        qtbot.waitUntil(lambda: label.height() >= label.heightForWidth(label.width()), timeout=5_000)  # no line cut off
    assert dialog.show_disk_kv.isVisible() and dialog.clear_disk_kv.isVisible()


def test_a_status_line_too_long_for_the_window_ends_in_an_ellipsis(qtbot, make_window):
    window = make_window()
    qtbot.waitUntil(lambda: "prefix hits" in window.engine_label.text(), timeout=10_000)
    window.resize(900, 600)
    label = window.engine_label
    qtbot.waitUntil(lambda: label.width() < label.fontMetrics().horizontalAdvance(label.text()), timeout=5_000)
    full = label.text()
    assert full.endswith("%") and label.toolTip() == full  # the whole line stays readable
    shown = label.fontMetrics().elidedText(full, Qt.TextElideMode.ElideRight, label.contentsRect().width())
    assert shown.endswith("…") and shown != full
    plain = QLabel(shown)  # what the label must look like: the line cut at a character, with "…"
    plain.setObjectName(label.objectName())
    plain.setParent(window.statusBar())
    plain.setGeometry(label.geometry())
    plain.show()
    assert label.grab().toImage() == plain.grab().toImage()
