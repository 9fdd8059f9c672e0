"""The app's storage without the engine: chats and messages in SQLite, settings in JSON, the
data dir's precedence, and the KV picture's arithmetic."""
import json
from dataclasses import replace

from app.gui.history import PINNED, History
from app.backends import LocalSpec
from app.backends.kv import KvBlocks
from app.gui.messages import DONE, INTERRUPTED, STREAMING, AnswerStats, ChatMessage, SourceRef
from app.paths import data_dir, settings_path
from app.gui.settings import Settings, load_presets, load_settings, save_settings


def test_chats_and_messages_round_trip(tmp_path):
    path = tmp_path / "chats.sqlite3"
    history = History(path)
    a, b, c = (history.create_chat(t) for t in ("a", "b", "c"))
    history.set_order([c.id, a.id, b.id])
    history.rename_chat(a.id, "renamed")
    history.set_documents(b.id, PINNED, ["doc1", "doc2"])
    history.close_chat(c.id)
    question = ChatMessage("user", "Why?")
    history.add_message(a.id, question)
    answer = ChatMessage("assistant", "Because", STREAMING,
                         sources=[SourceRef(1, "doc1", "/x/manual.pdf", 3, "snippet", cited=True, start=5, end=9)],
                         stats=AnswerStats(0.1, 20.0, 8, 30, 16, "stop"))
    history.add_message(a.id, answer)
    answer.content += " of the wind"
    history.save_message(answer)
    history.set_current(b.id)
    history.close()

    again = History(path)
    assert [(r.title, r.doc_mode, r.pinned_doc_ids) for r in again.open_chats()] == [
        ("renamed", "search", []), ("b", PINNED, ["doc1", "doc2"])]
    assert again.current() == b.id
    restored = again.messages(a.id)
    assert [m.content for m in restored] == ["Why?", "Because of the wind"]
    assert restored[0].status == DONE and restored[1].status == INTERRUPTED  # it was still streaming
    assert restored[1].sources == answer.sources and restored[1].stats == answer.stats
    assert again.reopen_last_closed().title == "c"
    assert [r.title for r in again.open_chats()] == ["renamed", "b", "c"]
    again.delete_messages_from(a.id, restored[1].id)
    assert [m.content for m in again.messages(a.id)] == ["Why?"]
    journal = again._db.execute("PRAGMA journal_mode").fetchone()[0]
    assert journal == "wal"


def test_settings_persist_and_bad_values_fall_back(tmp_path):
    assert load_settings(tmp_path) == Settings()
    chosen = Settings(model_source="gguf", model_path="/models/x.gguf", device="cpu", max_model_len=2048,
                      temperature=0.2, theme="dark", system_preset="Concise", system_prompt="Be brief.")
    save_settings(tmp_path, chosen)
    assert load_settings(tmp_path) == chosen
    # on the CPU the KV memory fraction means nothing: changing it is no reason to reload
    assert chosen.backend_spec() == LocalSpec.of("/models/x.gguf", "cpu", max_model_len=2048)
    assert replace(chosen, kv_memory_fraction=0.5).backend_spec() == chosen.backend_spec()
    gpu = replace(chosen, device="auto")
    assert gpu.backend_spec() == LocalSpec.of("/models/x.gguf", "auto", kv_memory_fraction=0.85, max_model_len=2048)
    assert replace(gpu, kv_memory_fraction=0.5).backend_spec() != gpu.backend_spec()
    assert Settings().backend_spec() == LocalSpec.of(None, "auto", kv_memory_fraction=0.85)

    raw = json.loads(settings_path(tmp_path).read_text())
    raw.update(temperature=-1, top_p="high", theme="neon", max_tokens=64, unknown=1)
    settings_path(tmp_path).write_text(json.dumps(raw))
    loaded = load_settings(tmp_path)
    assert (loaded.temperature, loaded.top_p, loaded.theme) == (0.7, 0.9, "light")  # defaults
    assert loaded.max_tokens == 64 and loaded.model_path == "/models/x.gguf"
    settings_path(tmp_path).write_text("{not json")
    assert load_settings(tmp_path) == Settings()


def test_presets_and_data_dir(tmp_path, monkeypatch):
    presets = load_presets()
    assert presets[0].name == Settings().system_preset and presets[0].text is None
    assert all(p.name for p in presets) and len({p.name for p in presets}) == len(presets)
    monkeypatch.setenv("FOLIO_DATA_DIR", str(tmp_path / "from-env"))
    assert data_dir() == tmp_path / "from-env"
    assert data_dir(tmp_path / "from-arg") == tmp_path / "from-arg"


def test_kv_blocks_partition_the_pool():
    stats = {"blocks_total": 100, "blocks_used": 30, "blocks_shared": 12, "blocks_cached": 20,
             "blocks_free": 70, "block_size": 16}
    blocks = KvBlocks.from_stats(stats)
    assert (blocks.shared, blocks.used, blocks.cached, blocks.free) == (12, 18, 20, 50)
    assert blocks.total == 100
