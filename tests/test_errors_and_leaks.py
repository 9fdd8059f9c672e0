"""Bad input gets a clear error and allocates nothing; cancelled and finished requests free everything."""
import json
import threading

import pytest
import torch

from engine import LLM, EngineThread, ModelLoadError, RequestError, SamplingParams
from engine.loader import resolve_model


@pytest.fixture(scope="module")
def llm():
    return LLM(num_kv_blocks=64)  # 1024 tokens of context


def test_prompt_longer_than_context_names_both_lengths(llm):
    before = llm.stats()
    with pytest.raises(ValueError, match=r"2000 tokens long but the context holds 1024"):
        llm.generate([list(range(100, 2100))], SamplingParams(max_tokens=4))
    after = llm.stats()
    assert after["blocks_used"] == before["blocks_used"] == 0
    assert not llm.engine.has_unfinished_requests()


def test_one_bad_prompt_queues_none_of_the_batch(llm):
    with pytest.raises(ValueError, match="empty"):
        llm.generate(["fine", []], SamplingParams(max_tokens=4))
    assert not llm.engine.has_unfinished_requests()


@pytest.mark.parametrize("kwargs, message", [
    ({"max_tokens": 0}, "max_tokens"),
    ({"temperature": -1}, "temperature"),
    ({"top_p": 0}, "top_p"),
    ({"top_k": -3}, "top_k"),
    ({"min_p": 1.5}, "min_p"),
    ({"repetition_penalty": 0}, "repetition_penalty"),
    ({"n": 0}, "n must"),
    ({"stop": [""]}, "stop"),
    # what a client can send that used to pass here and fail later inside a step
    ({"top_k": 2**63}, "top_k"),
    ({"seed": 2**64 - 1, "n": 2}, "seed"),
    ({"seed": -1}, "seed"),
    ({"max_tokens": True}, "max_tokens"),
    ({"seed": True}, "seed"),
    ({"max_tokens": 8.0}, "max_tokens"),
    ({"max_tokens": "8"}, "max_tokens"),
    ({"temperature": float("inf")}, "temperature"),
    ({"temperature": float("nan")}, "temperature"),
    ({"temperature": 1e-45}, "temperature"),
    ({"temperature": "hot"}, "temperature"),
    ({"top_p": None}, "top_p"),
    ({"repetition_penalty": 1e-300}, "repetition_penalty"),
    ({"ignore_eos": 1}, "ignore_eos"),
    ({"stop": 5}, "stop"),
    ({"stop": ["x"] * 17}, "stop"),
])
def test_invalid_sampling_params(kwargs, message):
    with pytest.raises(RequestError, match=message) as caught:
        SamplingParams(**kwargs)
    assert isinstance(caught.value, ValueError)
    assert caught.value.param == next(iter(kwargs))


def test_out_of_vocabulary_token_ids(llm):
    with pytest.raises(ValueError, match="outside the vocabulary"):
        llm.generate([[1, 2, 10**7]], SamplingParams(max_tokens=2))


def test_missing_model_path(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        LLM(tmp_path / "nope")


def test_corrupt_gguf(tmp_path, monkeypatch):
    monkeypatch.setenv("FOLIO_CACHE_DIR", str(tmp_path / "cache"))
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF" + b"\x00\xff" * 500)
    with pytest.raises(ModelLoadError, match="not a readable GGUF"):
        LLM(bad)
    assert not list((tmp_path / "cache" / "models").glob("broken*"))  # no half-converted folder left


def test_corrupt_safetensors(tmp_path, bundled_folder):
    folder = tmp_path / "model"
    folder.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        (folder / name).write_bytes((bundled_folder / name).read_bytes())
    (folder / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}")
    with pytest.raises(ModelLoadError, match="cannot read weights"):
        LLM(folder)


def test_folder_without_config_or_with_pickles(tmp_path):
    with pytest.raises(ModelLoadError, match="no config.json"):
        resolve_model(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (tmp_path / "pytorch_model.bin").write_bytes(b"pickle")
    with pytest.raises(ModelLoadError, match="pickled"):
        resolve_model(tmp_path)


def test_unsupported_architecture(tmp_path, bundled_folder):
    cfg = json.loads((bundled_folder / "config.json").read_text())
    cfg["model_type"] = "gpt2"
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    (tmp_path / "model.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(ModelLoadError, match="unsupported model type 'gpt2'"):
        LLM(tmp_path)


def test_second_load_reuses_the_converted_cache(bundled_folder, monkeypatch):
    import engine.gguf_file as gguf_file
    import engine.loader as loader

    def fail(*_):
        raise AssertionError("converted again")
    monkeypatch.setattr(gguf_file, "write_metadata", fail)
    assert loader.resolve_model(None).folder == bundled_folder


@pytest.fixture(scope="module")
def engine_thread():
    et = EngineThread(num_kv_blocks=128)
    et.wait_ready(120)
    yield et
    et.shutdown()


def test_stream_deltas_add_up_to_the_text(engine_thread):
    deltas = []
    handle = engine_thread.submit([{"role": "user", "content": "Count from one to ten in words."}],
                                  SamplingParams(max_tokens=40, temperature=0), on_delta=deltas.append)
    streamed = "".join(handle)  # the iterator and the callback see the same deltas
    out = handle.result(60)
    assert streamed == out.text == "".join(deltas)
    assert out.text and "\ufffd" not in out.text


def test_cancel_mid_answer_returns_every_block(engine_thread):
    engine = engine_thread.wait_ready()
    free_before = engine.block_manager.num_free_blocks
    got_some = threading.Event()
    handle = engine_thread.submit("Write a very long story about a dragon.",
                                  SamplingParams(max_tokens=500, temperature=0, ignore_eos=True),
                                  on_delta=lambda d: got_some.set())
    assert got_some.wait(60)
    handle.cancel()
    out = handle.result(30)
    assert out.finish_reason == "abort"
    assert 0 < len(out.token_ids) < 500
    assert engine.block_manager.num_free_blocks == free_before == engine.block_manager.num_blocks


def test_errors_reach_the_handle(engine_thread):
    errors = []
    handle = engine_thread.submit(list(range(100, 5000)), SamplingParams(max_tokens=4), on_error=errors.append)
    with pytest.raises(ValueError, match="context holds"):
        handle.result(30)
    assert isinstance(errors[0], ValueError)
    with pytest.raises(ValueError):
        list(handle)


def test_load_error_reaches_submitters(tmp_path):
    et = EngineThread(tmp_path / "missing")
    with pytest.raises(ModelLoadError):
        et.wait_ready(30)
    handle = et.submit("hello")
    with pytest.raises(ModelLoadError):
        handle.result(30)
    et.shutdown()


def test_stop_strings_end_the_text_and_are_not_streamed(engine_thread):
    handle = engine_thread.submit([{"role": "user", "content": "List three fruits, one per line."}],
                                  SamplingParams(max_tokens=60, temperature=0, stop=["\n"]))
    streamed = "".join(handle)
    out = handle.result(30)
    assert out.finish_reason == "stop"
    assert "\n" not in out.text and streamed == out.text


def test_config_missing_a_field_and_missing_tokenizer(tmp_path, bundled_folder):
    cfg = json.loads((bundled_folder / "config.json").read_text())
    del cfg["num_attention_heads"]
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    (tmp_path / "model.safetensors").write_bytes(b"x")
    with pytest.raises(ModelLoadError, match="num_attention_heads"):
        LLM(tmp_path)
    good = _tiny_checkpoint(tmp_path / "no-tokenizer", bundled_folder, lambda t: None)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (good / name).unlink()
    with pytest.raises(ModelLoadError, match="tokenizer"):
        LLM(good, num_kv_blocks=4)


def test_stats_are_fresh_once_idle(engine_thread):
    engine_thread.submit("Hi", SamplingParams(max_tokens=3)).result(30)
    deadline = 50
    while engine_thread.stats().get("num_running", 1) and deadline:
        threading.Event().wait(0.05)
        deadline -= 1
    stats = engine_thread.stats()
    assert stats["num_running"] == 0 and stats["blocks_used"] == 0


def test_a_failing_callback_stops_its_request_not_the_engine(engine_thread):
    def explode(_delta):
        raise RuntimeError("callback bug")

    def explode_again(_error):
        raise RuntimeError("the error callback fails too")
    bad = engine_thread.submit("Tell me a story.", SamplingParams(max_tokens=20, ignore_eos=True), on_delta=explode,
                               on_error=explode_again)
    with pytest.raises(RuntimeError, match="callback bug"):
        bad.result(30)
    good = engine_thread.submit("Hello", SamplingParams(max_tokens=4, ignore_eos=True)).result(30)
    assert len(good.token_ids) == 4
    engine = engine_thread.wait_ready()
    assert engine.block_manager.num_free_blocks == engine.block_manager.num_blocks


def test_one_request_failing_on_its_own_leaves_the_others_streaming(engine_thread, monkeypatch):
    """An unforeseen failure in one request's output processing (here: its detokenizer) fails
    that request alone; the requests batched with it finish with their full length."""
    from engine.tokenizer import IncrementalDetokenizer

    engine = engine_thread.wait_ready()
    poisoned_prompt = engine.tokenizer.encode("poison pill")
    real_add = IncrementalDetokenizer.add

    def add(self, token_id):
        if self.ids[:len(poisoned_prompt[-4:])] == poisoned_prompt[-4:] and len(self.ids) > 8:
            raise OverflowError("Overflow when unpacking long long")
        return real_add(self, token_id)
    monkeypatch.setattr(IncrementalDetokenizer, "add", add)

    params = SamplingParams(max_tokens=48, temperature=0, ignore_eos=True)
    innocent = [engine_thread.submit(f"Tell me a story about robot number {i}.", params) for i in range(4)]
    poisoned = engine_thread.submit(poisoned_prompt, params)
    with pytest.raises(OverflowError):
        poisoned.result(60)
    for handle in innocent:
        out = handle.result(60)
        assert out.finish_reason == "length" and len(out.token_ids) == 48
    assert engine.block_manager.num_free_blocks == engine.block_manager.num_blocks


def test_a_failed_step_fails_the_batch_with_a_clear_message(engine_thread, monkeypatch):
    from engine.engine_thread import StepFailed

    engine = engine_thread.wait_ready()

    def broken(batch, samples):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")
    monkeypatch.setattr(engine.runner, "launch", broken)
    handle = engine_thread.submit("Hello", SamplingParams(max_tokens=4))
    with pytest.raises(StepFailed, match="every answer in progress stopped"):
        handle.result(30)
    monkeypatch.undo()
    assert engine_thread.submit("Hello", SamplingParams(max_tokens=4)).result(30).token_ids
    assert engine.block_manager.num_free_blocks == engine.block_manager.num_blocks


def _tiny_checkpoint(folder, bundled_folder, edit):
    """The bundled model's config and tokenizer with a one-layer random checkpoint, edited."""
    from safetensors.torch import save_file
    cfg = json.loads((bundled_folder / "config.json").read_text())
    cfg["num_hidden_layers"] = 1
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(cfg))
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (folder / name).write_bytes((bundled_folder / name).read_bytes())
    h, i, kv = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_key_value_heads"]
    d = h // cfg["num_attention_heads"]
    p = "model.layers.0."
    tensors = {"model.embed_tokens.weight": torch.zeros(cfg["vocab_size"], h), "model.norm.weight": torch.ones(h),
               p + "input_layernorm.weight": torch.ones(h), p + "post_attention_layernorm.weight": torch.ones(h),
               p + "self_attn.q_proj.weight": torch.zeros(h, h), p + "self_attn.k_proj.weight": torch.zeros(kv * d, h),
               p + "self_attn.v_proj.weight": torch.zeros(kv * d, h), p + "self_attn.o_proj.weight": torch.zeros(h, h),
               p + "mlp.gate_proj.weight": torch.zeros(i, h), p + "mlp.up_proj.weight": torch.zeros(i, h),
               p + "mlp.down_proj.weight": torch.zeros(h, i)}
    edit(tensors)
    save_file(tensors, str(folder / "model.safetensors"))
    return folder


@pytest.mark.parametrize("edit, message", [
    (lambda t: t.pop("model.layers.0.mlp.up_proj.weight"), "missing 1 weights.*up_proj"),
    (lambda t: t.update({"model.layers.0.self_attn.o_proj.weight": torch.zeros(3, 5)}), "o_proj.*shape"),
    (lambda t: t.update({"model.layers.0.mlp.bogus.weight": torch.zeros(2)}), "unexpected weight"),
    (lambda t: t.update({"model.norm.weight": torch.ones(576, dtype=torch.complex64)}), "complex64, expected floating"),
])
def test_malformed_checkpoints_are_one_line_load_errors(tmp_path, bundled_folder, edit, message):
    folder = _tiny_checkpoint(tmp_path / "model", bundled_folder, edit)
    with pytest.raises(ModelLoadError, match=message) as caught:
        LLM(folder, num_kv_blocks=4)
    assert "\n" not in str(caught.value)


def test_interrupted_conversions_are_cleaned_up_on_the_next_start(tmp_path):
    from engine.file_lock import ExclusiveLock
    from engine.loader import CONVERTING_PREFIX, remove_stale_conversions
    killed = tmp_path / (CONVERTING_PREFIX + "killed")  # what a SIGKILL mid-conversion leaves
    killed.mkdir()
    (killed / "model.safetensors").write_bytes(b"half")
    (killed / ".lock").touch()
    running = tmp_path / (CONVERTING_PREFIX + "running")  # another process converting right now
    running.mkdir()
    held = ExclusiveLock(running / ".lock")
    assert held.try_acquire()
    try:
        assert remove_stale_conversions(tmp_path) == [killed]
        assert not killed.exists() and running.is_dir()
    finally:
        held.release()
