"""`folio serve` end to end: the server in a subprocess with the bundled model, spoken to by the
official `openai` client (and by raw HTTP where the client would not send what is tested)."""
from __future__ import annotations

import base64
import json
import os
import socket
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import openai
import pytest

from app.server.command import bind, exposure_warning, is_loopback, main as serve_main
from serve_process import HI, KEY, LONG_ANSWER, MODEL, ServerProcess, stats, wait_until, wait_until_idle

ALIAS = "folio-test"

@pytest.fixture(scope="module")
def server():
    proc = ServerProcess("--api-key", KEY, "--served-model-name", ALIAS)
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.base_url, api_key=KEY, max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def llm():
    from engine import LLM
    return LLM(num_kv_blocks=64)


def greedy(max_tokens: int) -> dict:
    return {"temperature": 0, "max_tokens": max_tokens}


def post(server: ServerProcess, path: str, body: bytes | dict, key: str | None = KEY) -> httpx.Response:
    headers = {"Content-Type": "application/json"}
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.post(f"{server.base_url}{path}", content=content, headers=headers, timeout=120)


def assert_openai_error(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"]
    return error


def stream_chat(client: openai.OpenAI, messages: list[dict], max_tokens: int) -> tuple[str, str | None]:
    text, reason = [], None
    for chunk in client.chat.completions.create(model=MODEL, messages=messages, stream=True, **greedy(max_tokens)):
        for choice in chunk.choices:
            text.append(choice.delta.content or "")
            reason = choice.finish_reason or reason
    return "".join(text), reason


# ---------------------------------------------------------------------------------- endpoints

def test_models_lists_the_chat_model_its_alias_and_the_embedder(client):
    ids = [m.id for m in client.models.list()]
    assert ids == [MODEL, ALIAS, "all-MiniLM-L6-v2"]
    assert client.models.retrieve(MODEL).id == MODEL


def test_chat_greedy_matches_the_engine_and_streams_the_same_text(client, llm):
    from engine import SamplingParams
    expected = llm.chat([HI], SamplingParams(temperature=0, max_tokens=12))[0]

    reply = client.chat.completions.create(model=MODEL, messages=HI, **greedy(12))
    streamed, reason = stream_chat(client, HI, 12)

    assert reply.choices[0].message.content == expected.text
    assert reply.choices[0].message.role == "assistant"
    assert reply.choices[0].finish_reason == expected.finish_reason
    assert reply.usage.prompt_tokens == len(expected.prompt_token_ids)
    assert reply.usage.completion_tokens == len(expected.token_ids)
    assert streamed == expected.text and reason == expected.finish_reason


def test_the_alias_serves_too_and_max_completion_tokens_limits(client):
    reply = client.chat.completions.create(model=ALIAS, messages=LONG_ANSWER, temperature=0, max_completion_tokens=3)
    assert reply.model == ALIAS
    assert reply.usage.completion_tokens == 3 and reply.choices[0].finish_reason == "length"


def test_completions_text_and_token_prompts_agree(client, llm):
    from engine import SamplingParams
    prompt = "The capital of France is"
    expected = llm.generate([prompt], SamplingParams(temperature=0, max_tokens=6))[0]

    by_text = client.completions.create(model=MODEL, prompt=prompt, **greedy(6))
    by_ids = client.completions.create(model=MODEL, prompt=expected.prompt_token_ids, **greedy(6))
    streamed = "".join(c.choices[0].text for c in client.completions.create(
        model=MODEL, prompt=prompt, stream=True, **greedy(6)) if c.choices)

    assert by_text.choices[0].text == expected.text
    assert by_ids.choices[0].text == expected.text
    assert streamed == expected.text
    assert by_text.object == "text_completion"


def test_n_samples_and_several_prompts_each_get_a_choice(client):
    reply = client.completions.create(model=MODEL, prompt=["One, two,", "Red, green,"], n=2, **greedy(3))
    texts = [c.text for c in sorted(reply.choices, key=lambda c: c.index)]
    assert [c.index for c in reply.choices] == [0, 1, 2, 3]
    assert texts[0] == texts[1] and texts[2] == texts[3]  # greedy: the samples of a prompt agree
    assert texts[0] != texts[2]


def test_stop_strings_end_the_answer_before_them(client):
    full = client.completions.create(model=MODEL, prompt="1, 2, 3, 4,", **greedy(12)).choices[0].text
    assert " 7" in full  # the model counts on
    cut = client.completions.create(model=MODEL, prompt="1, 2, 3, 4,", stop=[" 7"], **greedy(12)).choices[0]
    assert cut.text == full[:full.index(" 7")] and cut.finish_reason == "stop"


def test_usage_counts_cached_prompt_tokens_on_a_repeated_long_prompt(client):
    long = [{"role": "system", "content": "You answer briefly. " * 40}, *HI]
    first = client.chat.completions.create(model=MODEL, messages=long, **greedy(2))
    chunks = list(client.chat.completions.create(model=MODEL, messages=long, stream=True,
                                                 stream_options={"include_usage": True}, **greedy(2)))
    usage = chunks[-1].usage

    assert first.usage.prompt_tokens > 150
    assert chunks[-1].choices == [] and usage is not None
    assert usage.prompt_tokens == first.usage.prompt_tokens
    # every full block of the prompt but the last token's is served from the cache
    assert usage.prompt_tokens_details.cached_tokens >= usage.prompt_tokens - 16
    assert all(c.usage is None for c in chunks[:-1])


def test_embeddings_are_the_embedders_vectors(client):
    from rag.embedder import Embedder
    texts = ["Lighthouses guide ships at night.", "A recipe for bread."]
    expected = Embedder().embed(texts)

    as_floats = client.embeddings.create(model="all-MiniLM-L6-v2", input=texts, encoding_format="float")
    as_base64 = client.embeddings.create(model="all-MiniLM-L6-v2", input=texts, encoding_format="base64")

    floats = np.array([d.embedding for d in as_floats.data], dtype=np.float32)
    # the client hands an asked-for base64 string over as it came: little-endian float32
    decoded = np.array([np.frombuffer(base64.b64decode(d.embedding), "<f4") for d in as_base64.data])
    for got in (floats, decoded):
        assert got.shape == (2, 384)
        np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
        np.testing.assert_allclose(got, expected, atol=1e-5)
    assert as_floats.usage.prompt_tokens > 0


# ---------------------------------------------------------------------------------- bad input

def test_malformed_json_is_a_400(server):
    error = assert_openai_error(post(server, "/chat/completions", b'{"messages": [{"role": '), 400)
    assert "not valid JSON" in error["message"]


def test_a_body_missing_fields_is_a_400_naming_the_field(server):
    error = assert_openai_error(post(server, "/chat/completions", {"model": MODEL}), 400)
    assert error["param"] == "messages"


def test_an_unknown_model_is_a_404(client, server):
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="gpt-imaginary", messages=HI, max_tokens=2)
    assert caught.value.status_code == 404
    assert "gpt-imaginary" in caught.value.message
    not_embedder = post(server, "/embeddings", {"model": MODEL, "input": "x"})
    assert assert_openai_error(not_embedder, 404)["code"] == "model_not_found"
    assert_openai_error(httpx.get(f"{server.root_url}/v1/nowhere", headers={"Authorization": f"Bearer {KEY}"}), 404)


def test_a_prompt_over_the_context_is_a_400_with_both_lengths(client, server):
    limit = stats(server)["max_model_len"]
    with pytest.raises(openai.BadRequestError) as caught:
        client.completions.create(model=MODEL, prompt=[42] * (limit + 5), max_tokens=1)
    message = caught.value.message
    assert f"{limit} tokens" in message and f"{limit + 5} tokens" in message
    assert caught.value.code == "context_length_exceeded"


def test_bad_sampling_values_are_a_400(client):
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=MODEL, messages=HI, top_p=0, max_tokens=2)
    assert "top_p" in caught.value.message


def test_a_wrong_or_missing_api_key_is_a_401(server):
    wrong = openai.OpenAI(base_url=server.base_url, api_key="sk-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as caught:
        wrong.models.list()
    assert caught.value.status_code == 401
    # checked before the body is read: a wrong key with a malformed body is still a 401
    wrong_and_malformed = post(server, "/chat/completions", b"{", key="sk-wrong")
    assert assert_openai_error(wrong_and_malformed, 401)["code"] == "invalid_api_key"
    assert_openai_error(post(server, "/chat/completions", {"messages": HI}, key=None), 401)


def test_a_host_other_than_this_machine_is_a_403(server):
    # a page whose domain was rebound to 127.0.0.1 (DNS rebinding) sends its own name as Host
    for host in ("evil.example", f"evil.example:{server.port}", "127.0.0.1.evil.example"):
        refused = httpx.get(f"{server.base_url}/models", headers={"Host": host, "Authorization": f"Bearer {KEY}"})
        assert assert_openai_error(refused, 403)["code"] == "invalid_host"
    for host in (f"127.0.0.1:{server.port}", f"localhost:{server.port}", f"[::1]:{server.port}", "LOCALHOST"):
        served = httpx.get(f"{server.base_url}/models", headers={"Host": host, "Authorization": f"Bearer {KEY}"})
        assert served.status_code == 200, (host, served.text)


# ---------------------------------------------------------------------------------- load

def test_a_client_that_disconnects_mid_stream_frees_its_blocks(server):
    assert wait_until_idle(server)["blocks_used"] == 0
    body = {"model": MODEL, "messages": LONG_ANSWER, "stream": True, "temperature": 0,
            "ignore_eos": True}  # no max_tokens: the whole context, minutes of work if not cancelled
    with httpx.Client(timeout=120) as http:
        with http.stream("POST", f"{server.base_url}/chat/completions", json=body,
                         headers={"Authorization": f"Bearer {KEY}"}) as response:
            lines = response.iter_lines()  # held: dropping it would close the connection already
            contents = []
            for line in lines:
                if '"content":"' in line and '"content":""' not in line:
                    contents.append(line)
                if len(contents) == 3:
                    break
            busy = wait_until(server, lambda s: s["num_running"] == 1)  # stats lag a step or two
    assert len(contents) == 3
    assert busy["num_running"] == 1 and busy["blocks_used"] > 0

    idle = wait_until_idle(server)
    assert idle["num_running"] == 0 and idle["num_waiting"] == 0
    assert idle["blocks_used"] == 0 and idle["blocks_free"] == idle["blocks_total"]


def test_a_client_that_hangs_up_before_a_non_streamed_answer_frees_its_blocks(server):
    assert wait_until_idle(server)["blocks_used"] == 0
    body = json.dumps({"model": MODEL, "messages": LONG_ANSWER, "temperature": 0, "ignore_eos": True}).encode()
    head = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {KEY}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode()
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(head + body)
        busy = wait_until(server, lambda s: s["num_running"] == 1 and s["blocks_used"] > 0)
    assert busy["num_running"] == 1

    idle = wait_until_idle(server)
    assert idle["num_running"] == 0 and idle["blocks_used"] == 0


def test_a_client_that_hangs_up_before_the_stream_starts_frees_its_blocks(server, client):
    assert wait_until_idle(server)["blocks_used"] == 0
    body = json.dumps({"model": MODEL, "messages": LONG_ANSWER, "stream": True, "temperature": 0,
                       "ignore_eos": True}).encode()  # the whole context if not cancelled
    head = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {KEY}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode()
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(head + body)  # closed at once: gone before the response's first step
    # a short answer meanwhile: by its end the doomed request has been submitted too
    assert client.chat.completions.create(model=MODEL, messages=HI, **greedy(4)).choices[0].message.content

    idle = wait_until_idle(server)
    assert idle["num_running"] == 0 and idle["num_waiting"] == 0 and idle["blocks_used"] == 0


def test_32_concurrent_streaming_clients_all_get_the_right_text(client, server):
    prompts = [[{"role": "user", "content": f"Name a colour. ({i})"}] for i in range(4)]
    expected = [client.chat.completions.create(model=MODEL, messages=p, **greedy(8)).choices[0].message.content
                for p in prompts]

    with ThreadPoolExecutor(32) as pool:
        results = list(pool.map(lambda i: stream_chat(client, prompts[i % 4], 8), range(32)))

    assert [text for text, _ in results] == [expected[i % 4] for i in range(32)]
    assert all(reason in ("stop", "length") for _, reason in results)
    assert wait_until_idle(server)["blocks_used"] == 0


# ---------------------------------------------------------------------------------- the command

def test_a_busy_port_is_a_clear_error_before_loading(server, capsys):
    port = server.port
    assert serve_main(["--port", str(port)]) == 2
    err = capsys.readouterr().err
    assert f"cannot listen on 127.0.0.1:{port}" in err and "Loading model" not in err


def test_a_missing_model_is_a_clear_error(tmp_path, capsys):
    assert serve_main(["--port", "0", "--model", str(tmp_path / "nothing")]) == 2
    err = capsys.readouterr().err
    assert "cannot load the model" in err and "does not exist" in err and "Traceback" not in err


def test_listening_beyond_loopback_without_a_key_warns():
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.5")
    assert exposure_warning("127.0.0.1", None) is None
    assert exposure_warning("0.0.0.0", "KEY") is None
    assert "without an API key" in exposure_warning("0.0.0.0", None)


def test_the_port_is_not_shared_on_windows(monkeypatch):
    monkeypatch.setattr(os, "name", "nt")  # there SO_REUSEADDR lets a second server take the port
    with bind("127.0.0.1", 0) as sock:
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR) == 0


def test_the_server_binds_loopback_by_default(server):
    assert server.base_url.startswith("http://127.0.0.1:")
    with socket.create_connection(("127.0.0.1", server.port), timeout=5):
        pass
