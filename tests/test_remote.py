"""`RemoteBackend` against `folio serve` in a subprocess: streaming, cancel, usage, and the
messages `test_connection` gives for each way a connection can fail."""
from __future__ import annotations

import io
import os
import subprocess
import sys
import threading
from pathlib import Path

import openai
import pytest

import app.backends.remote as remote
from app.cli.chat import TerminalChat
from app.backends import RemoteError, is_user_error, user_message
from app.backends.remote import RemoteBackend, normalise_base_url
from engine import RequestOutput, SamplingParams
from engine.loader import resolve_model
from doc_fixtures import make_pdf
from engine.tokenizer import Tokenizer
from serve_process import HI, KEY, LONG_ANSWER, MODEL, ServerProcess, free_port, wait_until, wait_until_idle

GREEDY = SamplingParams(temperature=0, max_tokens=8)


@pytest.fixture(scope="module")
def server():
    proc = ServerProcess("--api-key", KEY)
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.base_url, api_key=KEY, max_retries=0, timeout=120)


@pytest.fixture
def engine(server):
    with RemoteBackend(server.base_url, KEY, MODEL, timeout=120) as r:
        yield r


# ---------------------------------------------------------------------------------- answers

def test_a_chat_streams_through_callbacks_iteration_and_result_alike(engine, client):
    expected = client.chat.completions.create(model=MODEL, messages=HI, temperature=0, max_tokens=8)
    deltas: list[str] = []
    finished: list[RequestOutput] = []

    handle = engine.submit(HI, GREEDY, on_delta=deltas.append, on_finish=finished.append)
    iterated = "".join(handle)
    output = handle.result(timeout=120)

    assert output.text == expected.choices[0].message.content
    assert iterated == "".join(deltas) == output.text
    assert finished == [output] and handle.done
    assert output.finish_reason == expected.choices[0].finish_reason
    assert output.metrics.num_prompt_tokens == expected.usage.prompt_tokens
    assert output.metrics.num_generated_tokens == expected.usage.completion_tokens
    assert output.metrics.ttft_s is not None and output.metrics.ttft_s >= 0


def test_text_and_token_prompts_go_to_completions(engine, client):
    prompt = "The capital of France is"
    expected = client.completions.create(model=MODEL, prompt=prompt, temperature=0, max_tokens=8).choices[0].text

    ids = Tokenizer(resolve_model(None).folder).encode(prompt)
    by_text = engine.submit(prompt, GREEDY).result(timeout=120)
    by_ids = engine.submit(ids, GREEDY).result(timeout=120)

    assert by_text.text == by_ids.text == expected
    assert by_ids.prompt_token_ids == ids and by_ids.metrics.num_prompt_tokens == len(ids)


def test_cached_prompt_tokens_reach_the_metrics_and_stats(engine):
    long = [{"role": "system", "content": "You answer in one word. " * 30}, *HI]
    params = SamplingParams(temperature=0, max_tokens=2)
    assert engine.stats() == {}
    engine.submit(long, params).result(timeout=120)
    again = engine.submit(long, params).result(timeout=120)

    assert again.metrics.num_prompt_tokens > 100
    assert again.metrics.num_cached_tokens >= again.metrics.num_prompt_tokens - 16
    assert engine.stats()["cached_tokens"] == again.metrics.num_cached_tokens


def test_cancel_stops_the_answer_and_frees_the_servers_blocks(engine, server):
    assert wait_until_idle(server)["blocks_used"] == 0
    params = SamplingParams(temperature=0, max_tokens=4000, ignore_eos=True)  # minutes, if not cancelled
    handle = engine.submit(LONG_ANSWER, params)
    received = []
    for delta in handle:
        received.append(delta)
        if len(received) == 3:
            break
    assert wait_until(server, lambda s: s["num_running"] == 1)["num_running"] == 1

    handle.cancel()
    output = handle.result(timeout=60)

    assert output.finish_reason == "abort"
    assert output.text.startswith("".join(received))
    idle = wait_until_idle(server)
    assert idle["num_running"] == 0 and idle["blocks_used"] == 0


def test_a_late_cancel_leaves_the_next_request_on_the_same_connection_alone(engine, server):
    too_long = [42] * (wait_until_idle(server)["max_model_len"] + 3)
    first = engine.submit(too_long, GREEDY)
    with pytest.raises(RemoteError):  # a 400 read to its end: the connection goes back to the pool
        first.result(timeout=120)
    streaming = threading.Event()
    second = engine.submit(HI, SamplingParams(temperature=0, max_tokens=24),
                           on_delta=lambda _: streaming.set())
    assert streaming.wait(120)

    first.cancel()

    assert not first.cancelled
    assert second.result(timeout=120).finish_reason in ("stop", "length")


def test_shutdown_cancels_what_is_running(server):
    engine = RemoteBackend(server.base_url, KEY, MODEL)
    first_delta = threading.Event()
    handle = engine.submit(LONG_ANSWER, SamplingParams(temperature=0, max_tokens=4000, ignore_eos=True),
                           on_delta=lambda _: first_delta.set())
    assert first_delta.wait(120)
    engine.shutdown()
    assert handle.done and handle.result().finish_reason == "abort"
    assert wait_until_idle(server)["num_running"] == 0


def test_a_prompt_too_long_for_the_server_fails_with_both_lengths(engine, server):
    limit = wait_until_idle(server)["max_model_len"]
    errors: list[BaseException] = []
    handle = engine.submit([42] * (limit + 3), GREEDY, on_error=errors.append)
    with pytest.raises(RemoteError) as caught:
        handle.result(timeout=120)
    assert f"{limit} tokens" in str(caught.value) and f"{limit + 3} tokens" in str(caught.value)
    assert caught.value.status == 400 and errors == [caught.value]


def test_a_remote_error_is_a_user_error_as_the_engines_request_errors_are(engine):
    handle = engine.submit(HI, SamplingParams(n=2))
    with pytest.raises(RemoteError, match="n=1") as caught:
        handle.result(timeout=30)
    assert is_user_error(caught.value) and user_message(caught.value) == str(caught.value)


def test_folio_chats_session_runs_on_a_remote_engine_unchanged(engine, client):
    expected = client.chat.completions.create(model=MODEL, messages=HI, temperature=0, max_tokens=8)
    out, err = io.StringIO(), io.StringIO()

    TerminalChat(engine, GREEDY, stdin=io.StringIO("Hi!\n/stats\n"), stdout=out, stderr=err).run()

    assert expected.choices[0].message.content in out.getvalue()
    assert f"/{expected.usage.prompt_tokens} prompt tokens" in out.getvalue()  # the stat line
    assert "prompt_tokens" in out.getvalue() and err.getvalue() == ""  # /stats


def test_without_a_model_the_servers_first_is_used(server):
    with RemoteBackend(server.base_url, KEY) as r:
        assert r.resolve_model() == MODEL
        assert r.describe() == f"{MODEL} at {server.base_url}"


# ---------------------------------------------------------------------------------- test_connection

def test_connection_succeeds_with_the_model_named(server):
    message = remote.test_connection(server.base_url, KEY, MODEL)
    assert MODEL in message and message.startswith("Connected")
    # the /v1 may be left out
    assert MODEL in remote.test_connection(server.root_url, KEY)


def test_connection_with_a_wrong_key_says_so(server):
    with pytest.raises(RemoteError, match="API key") as caught:
        remote.test_connection(server.base_url, "sk-wrong")
    assert caught.value.status == 401


def test_connection_to_an_unknown_model_lists_the_offered_ones(server):
    with pytest.raises(RemoteError, match="no model 'gpt-imaginary'.*" + MODEL):
        remote.test_connection(server.base_url, KEY, "gpt-imaginary")


def test_connection_refused_is_a_clear_error():
    with pytest.raises(RemoteError, match="cannot connect to http://127.0.0.1:.*refused"):
        remote.test_connection(f"http://127.0.0.1:{free_port()}/v1")


def test_connection_timeout_is_a_clear_error(silent_port):
    with pytest.raises(RemoteError, match="no answer from .* within 0.5 s"):
        remote.test_connection(f"http://127.0.0.1:{silent_port}/v1", timeout=0.5)


def test_connection_to_a_wrong_path_or_a_bad_url_is_a_clear_error(server):
    with pytest.raises(RemoteError, match="no OpenAI-compatible API"):
        remote.test_connection(server.root_url + "/nothing", KEY)
    for bad in ("", "ftp://example.com/v1", "http://"):
        with pytest.raises(RemoteError, match="URL"):
            remote.test_connection(bad)


def test_base_urls_are_normalised():
    assert normalise_base_url("localhost:8000") == "http://localhost:8000/v1"
    assert normalise_base_url(" http://127.0.0.1:8000/ ") == "http://127.0.0.1:8000/v1"
    assert normalise_base_url("https://api.example.com/v1/") == "https://api.example.com/v1"
    assert normalise_base_url("http://host:1234/api/v1") == "http://host:1234/api/v1"


def test_folio_ask_and_chat_run_on_a_remote_server(server, client, tmp_path):
    """The CLI's --remote: `folio ask` answers from a local document through the server, and
    `folio chat` talks to it; both print the same greedy text the server gives directly."""
    make_pdf(tmp_path / "pump.pdf", ["If the motor hums but does not turn, the capacitor has failed."])
    env = {**os.environ, "FOLIO_DATA_DIR": str(tmp_path / "data"), "FOLIO_REMOTE_KEY": KEY}
    root = Path(__file__).resolve().parents[1]
    ask = subprocess.run([sys.executable, "-m", "app.cli", "ask", "Why does the motor hum?", "--doc",
                          str(tmp_path / "pump.pdf"), "--remote", server.base_url, "--max-tokens", "8"],
                         capture_output=True, text=True, env=env, cwd=root, timeout=300)
    assert ask.returncode == 0, ask.stderr
    answer, sources = ask.stdout.split("\nSources:\n")
    assert answer.strip() and sources.startswith(" [1] pump.pdf, page 1: If the motor hums")

    chat = subprocess.run([sys.executable, "-m", "app.cli", "chat", "--remote", server.base_url,
                           "--temperature", "0", "--max-tokens", "8"],
                          input="Hi!\n", capture_output=True, text=True, env=env, cwd=root, timeout=300)
    assert chat.returncode == 0, chat.stderr
    expected = client.chat.completions.create(model=MODEL, messages=HI, temperature=0, max_tokens=8)
    assert expected.choices[0].message.content in chat.stdout
    assert f"at {server.base_url}" in chat.stderr


def test_folio_chat_with_an_unreachable_remote_says_so():
    result = subprocess.run([sys.executable, "-m", "app.cli", "chat", "--remote", f"http://127.0.0.1:{free_port()}/v1"],
                            input="", capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.splitlines()[-1].startswith("folio chat: ") and "Traceback" not in result.stderr
