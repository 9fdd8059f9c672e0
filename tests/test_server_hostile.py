"""`folio serve` against hostile clients: one bad request fails alone, and no client can make the
server read, hold or work on more than its limits allow, or keep a connection by being slow.

One server for the module, with small limits so that each case is cheap, serving a copy of the
bundled model without its chat template (text completions work; chat requests are a clean 400).
"""
from __future__ import annotations

import json
import re
import select
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import pytest

from serve_process import ServerProcess, wait_until, wait_until_idle

CONTEXT = 160  # --max-model-len
MAX_BYTES = 8_000_000  # --max-request-bytes: room for the embedding batches below
MAX_INPUTS = 4096  # --max-embedding-inputs
HEADER_TIMEOUT, BODY_TIMEOUT = 1, 3  # seconds
PATIENCE = 120  # seconds to wait for what must happen within a few (a shared CPU is slow)
STREAM_TOKENS = 64


@pytest.fixture(scope="module")
def model_without_template(tmp_path_factory) -> Path:
    """The bundled model as a Hugging Face folder (its GGUF's tensors, dequantized, in
    safetensors), its chat template left out."""
    from safetensors.torch import save_file

    from engine import gguf_file
    from engine.loader import read_config, resolve_model
    from kernels.quant import QuantWeight, dequantize
    source = resolve_model(None)
    folder = tmp_path_factory.mktemp("no-template") / "smol-no-template"
    folder.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        if (source.folder / name).exists():
            (folder / name).write_bytes((source.folder / name).read_bytes())
    cfg = read_config(source)
    tensors = {name: (dequantize(t) if isinstance(t, QuantWeight) else t).contiguous()
               for name, t in gguf_file.iter_tensors(gguf_file.open_reader(source.gguf), cfg.num_heads,
                                                     cfg.num_kv_heads)}
    save_file(tensors, str(folder / "model.safetensors"))
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return folder


@pytest.fixture(scope="module")
def server(model_without_template):
    proc = ServerProcess("--model", str(model_without_template), "--max-model-len", str(CONTEXT),
                         "--max-request-bytes", str(MAX_BYTES), "--max-embedding-inputs", str(MAX_INPUTS),
                         "--header-timeout", str(HEADER_TIMEOUT), "--body-timeout", str(BODY_TIMEOUT))
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.base_url, api_key="unused", max_retries=0, timeout=PATIENCE)


@pytest.fixture(scope="module")
def model(client) -> str:
    return client.models.list().data[0].id


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def raw_request(path: str, body: bytes) -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


def read_until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (a generous bound on the wait)."""
    sock.settimeout(PATIENCE)
    received = b""
    while chunk := sock.recv(65536):
        received += chunk
    return received


# ---------------------------------------------------------------------------------- isolation

POISONS = [  # (field, what the official client sends for it)
    ("top_k", {"extra_body": {"top_k": 9223372036854775808}}),
    ("seed", {"seed": 18446744073709551615, "n": 2}),
    ("temperature", {"temperature": True}),
    ("max_tokens", {"max_tokens": 1e308}),
    ("top_p", {"top_p": "0.5"}),
    ("repetition_penalty", {"extra_body": {"repetition_penalty": 1e300}}),
    ("stop", {"stop": 5}),
]


def test_poisoned_requests_are_400s_naming_the_field_and_four_open_streams_finish(client, model, server):
    def stream(i: int) -> tuple[int, str | None]:
        reason, usage = None, None
        for chunk in client.completions.create(
                model=model, prompt=f"Once upon a time, in village number {i},", stream=True, temperature=0,
                max_tokens=STREAM_TOKENS, stream_options={"include_usage": True}, extra_body={"ignore_eos": True}):
            if chunk.choices:
                reason = chunk.choices[0].finish_reason or reason
            usage = chunk.usage or usage
        return usage.completion_tokens, reason

    with ThreadPoolExecutor(4) as pool:
        streams = [pool.submit(stream, i) for i in range(4)]
        assert wait_until(server, lambda s: s["num_running"] == 4)["num_running"] == 4
        for field, poison in POISONS:
            kwargs = {"max_tokens": 4, **poison}
            with pytest.raises(openai.BadRequestError) as caught:
                client.completions.create(model=model, prompt="Hi", **kwargs)
            assert caught.value.status_code == 400
            assert caught.value.param == field, (field, caught.value.message)
            assert field in caught.value.message
        results = [s.result() for s in streams]

    assert results == [(STREAM_TOKENS, "length")] * 4
    assert wait_until_idle(server)["blocks_used"] == 0


def test_a_chat_request_to_a_model_without_a_chat_template_is_a_400(client, model):
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=model, messages=[{"role": "user", "content": "Hi"}], max_tokens=2)
    assert caught.value.param == "messages"
    assert "chat template" in caught.value.message and "Traceback" not in caught.value.message


def test_max_tokens_beyond_the_context_is_clamped_to_it(client, model):
    prompt = [42] * (CONTEXT - 12)  # token ids: 12 tokens of room
    reply = client.completions.create(model=model, prompt=prompt, temperature=0, max_tokens=10**12,
                                      extra_body={"ignore_eos": True})
    assert reply.choices[0].finish_reason == "length"
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (CONTEXT - 12, 12)


# ---------------------------------------------------------------------------------- request size

def test_a_20_mb_prompt_is_a_413_before_its_body_is_read(client, model, server):
    before = rss_bytes(server.proc.pid)
    with pytest.raises(openai.APIStatusError) as caught:
        client.completions.create(model=model, prompt="word " * 4_000_000, max_tokens=1)
    grown = rss_bytes(server.proc.pid) - before

    assert caught.value.status_code == 413
    assert caught.value.code == "request_too_large" and str(MAX_BYTES) in caught.value.message
    assert grown < 50 * 2**20  # the body is never held (it was 5.6 GB)
    assert client.completions.create(model=model, prompt="Hi", max_tokens=1).choices  # the server goes on


def test_a_chunked_body_that_grows_past_the_cap_is_a_413(server):
    sent = []

    def body():
        yield b'{"prompt": "'
        while sum(sent) < MAX_BYTES + 2**20:  # more than the cap, with no length declared
            sent.append(65536)
            yield b"x" * 65536
        yield b'", "max_tokens": 1}'

    response = httpx.post(f"{server.base_url}/completions", content=body(), timeout=PATIENCE,
                          headers={"Content-Type": "application/json"})
    assert response.status_code == 413, response.text
    assert response.json()["error"]["code"] == "request_too_large"
    assert "content-length" not in response.request.headers  # it was sent chunked


def test_too_many_embedding_inputs_are_a_400(client):
    with pytest.raises(openai.BadRequestError) as caught:
        client.embeddings.create(model="all-MiniLM-L6-v2", input=["a"] * (MAX_INPUTS + 1))
    assert caught.value.param == "input"
    assert f"at most {MAX_INPUTS}" in caught.value.message


def test_embedding_stops_when_its_client_leaves(server):
    """4096 long inputs are minutes of work on a CPU; the client leaves after 2 s."""
    texts = ["The lighthouse keeper climbed the spiral stairs every evening at dusk. " * 20] * MAX_INPUTS
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(raw_request("/v1/embeddings", json.dumps({"input": texts}).encode()))
        time.sleep(2)
    pattern = re.compile(rf"embedding stopped after (\d+) of {MAX_INPUTS} inputs")
    deadline = time.monotonic() + PATIENCE
    while not (found := [m for line in server.lines if (m := pattern.search(line))]) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert found, "".join(server.lines[-20:])
    assert int(found[0].group(1)) < MAX_INPUTS


# ---------------------------------------------------------------------------------- slow clients

def test_32_slow_connections_are_closed_by_the_server(server):
    """16 trickle their headers a byte at a time (they would take minutes), 16 send nothing."""
    head = b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Padding: " + b"p" * 4000
    trickling = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(16)]
    silent = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(16)]
    still_open = set(trickling + silent)
    deadline, sent = time.monotonic() + PATIENCE, 0
    try:
        while still_open and time.monotonic() < deadline and sent < len(head):
            for sock in [s for s in trickling if s in still_open]:
                try:
                    sock.send(head[sent:sent + 1])
                except OSError:  # reset: the server closed it
                    still_open.discard(sock)
            sent += 1
            readable, _, _ = select.select(list(still_open), [], [], 0.05)
            for sock in readable:
                try:
                    if sock.recv(1024) == b"":
                        still_open.discard(sock)
                except OSError:
                    still_open.discard(sock)
        assert sent < len(head)  # the headers were never complete
        assert not still_open, f"{len(still_open)} of 32 slow connections are still open"
    finally:
        for sock in trickling + silent:
            sock.close()
    assert any("its request headers did not arrive" in line for line in server.lines)


def test_a_body_that_never_completes_gets_a_408_and_is_closed(server):
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(raw_request("/v1/completions", b'{"prompt": "Hi", "max_tokens": 1}' + b" " * 1000)[:-900])
        answer = read_until_closed(sock)
    assert answer.startswith(b"HTTP/1.1 408 ")
    assert json.loads(answer.split(b"\r\n\r\n", 1)[1])["error"]["code"] == "request_timeout"


def test_the_header_deadline_restarts_with_each_request_on_a_kept_connection(server):
    """Three requests on one connection, each after a pause shorter than the deadline: more time in
    all than the deadline, and none of it cut."""
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.settimeout(PATIENCE)
        replies = sock.makefile("rb")
        for _ in range(3):
            time.sleep(HEADER_TIMEOUT * 0.6)
            sock.sendall(b"GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            status = replies.readline()
            headers = dict(line.rstrip(b"\r\n").lower().split(b": ", 1)
                           for line in iter(replies.readline, b"\r\n"))
            assert status.startswith(b"HTTP/1.1 200 "), status
            assert json.loads(replies.read(int(headers[b"content-length"])))["data"]
