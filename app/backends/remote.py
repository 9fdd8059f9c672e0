"""Chats on any OpenAI-compatible server (`folio serve`, vLLM, llama.cpp, Ollama, OpenAI) instead
of the local engine, behind the `Backend` contract.

`RemoteBackend.submit` returns a `RemoteHandle` whose stream is an HTTP request in its own thread:
deltas, callbacks, `result()` and iteration work as for the local engine, and the output is an
`engine.RequestOutput`. `cancel()` shuts the socket, so the server sees the client go and stops
generating. Errors a user can cause (bad URL, refused connection, wrong key, a prompt too long for
the server's model) arrive as `RemoteError` with a message meant for them.
"""
from __future__ import annotations

import itertools
import json
import logging
import queue
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator

import httpx

from app.backends.errors import RemoteError
from app.backends.protocol import PromptInput
from engine import SamplingParams
from engine.outputs import CompletionOutput, RequestMetrics, RequestOutput

CONTEXT_TOKENS = 8192   # assumed for a remote model: the API does not report its context
CHARS_PER_TOKEN = 3     # a cautious estimate, for budgeting a prompt without the tokenizer
MESSAGE_OVERHEAD_TOKENS = 4  # role markers around each chat message
_END = object()
log = logging.getLogger(__name__)


def normalise_base_url(url: str) -> str:
    """"localhost:8000" -> "http://localhost:8000/v1": the scheme and the usual /v1 are added
    when left out; an explicit path is kept as given."""
    text = url.strip()
    if not text:
        raise RemoteError("no server URL given")
    if "://" not in text:
        text = "http://" + text
    try:
        parsed = httpx.URL(text)
    except httpx.InvalidURL as e:
        raise RemoteError(f"{url!r} is not a valid server URL ({e})") from e
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise RemoteError(f"{url!r} is not a valid server URL: it should look like http://host:port/v1")
    if parsed.path in ("", "/"):
        parsed = parsed.copy_with(path="/v1")
    return str(parsed).rstrip("/")


class RemoteHandle:
    """One answer streamed over HTTP. Callbacks run on the request's thread; `cancel` may be called
    from any thread."""

    def __init__(self, request_id: str, on_delta: Callable[[str], None] | None,
                 on_finish: Callable[[RequestOutput], None] | None,
                 on_error: Callable[[BaseException], None] | None) -> None:
        self.request_id = request_id
        self.output: RequestOutput | None = None
        self.error: BaseException | None = None
        self.cancelled = False
        self._on_delta, self._on_finish, self._on_error = on_delta, on_finish, on_error
        self._deltas: queue.Queue = queue.Queue()
        self._ended = threading.Event()
        self._lock = threading.Lock()
        self._socket: socket.socket | None = None

    @property
    def done(self) -> bool:
        return self._ended.is_set()

    def cancel(self) -> None:
        """Stop: the connection is shut at once, and the handle finishes with reason "abort"
        and the text so far. Nothing once the answer is done."""
        with self._lock:
            if self.done:
                return
            self.cancelled = True
            _shut(self._socket)

    def result(self, timeout: float | None = None) -> RequestOutput:
        if not self._ended.wait(timeout):
            raise TimeoutError(f"request {self.request_id} still running after {timeout}s")
        if self.error is not None:
            raise self.error
        assert self.output is not None
        return self.output

    def wait(self, timeout: float | None = None) -> bool:
        return self._ended.wait(timeout)

    def __iter__(self) -> Iterator[str]:
        while (delta := self._deltas.get()) is not _END:
            yield delta
        if self.error is not None:
            raise self.error

    # ------------------------------------------------------------------ the request's thread

    def attach(self, response: httpx.Response) -> None:
        """Remember the response's socket, so that `cancel` from another thread can wake the
        blocked read (closing a file descriptor would not)."""
        stream = response.extensions.get("network_stream")
        sock = stream.get_extra_info("socket") if stream is not None else None
        with self._lock:
            self._socket = sock
            if self.cancelled:
                _shut(sock)

    def detach(self) -> None:
        """Forget the socket before the stream ends: it goes back to the client's pool and
        may carry another request, which a late `cancel` must not cut."""
        with self._lock:
            self._socket = None

    def add_delta(self, text: str) -> None:
        self._deltas.put(text)
        if self._on_delta:
            self._on_delta(text)

    def finish(self, output: RequestOutput) -> None:
        self.output = output
        self._end(self._on_finish, output)

    def fail(self, error: BaseException) -> None:
        self.error = error
        self._end(self._on_error, error)

    def _end(self, callback, payload) -> None:
        self._ended.set()
        self._deltas.put(_END)
        if callback:
            try:
                callback(payload)
            except Exception:  # the outcome is on the handle already
                log.exception("the end callback of %s failed", self.request_id)


class RemoteBackend:
    """`RemoteBackend(base_url, api_key, model)`; `model=None` takes the server's first model
    (`resolve_model` asks for it). `timeout` bounds connecting and each wait for the server (a
    slow prompt included)."""

    remote = True
    max_model_len = CONTEXT_TOKENS

    def __init__(self, base_url: str, api_key: str | None = None, model: str | None = None,
                 timeout: float = 60.0) -> None:
        self.base_url = normalise_base_url(base_url)
        self.model = model or None
        self.timeout = timeout
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.Client(headers=headers, timeout=httpx.Timeout(timeout))
        self._ids = itertools.count()
        self._live: dict[str, RemoteHandle] = {}
        self._lock = threading.Lock()
        self._last_usage: dict[str, float] = {}

    def __enter__(self) -> RemoteBackend:
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()

    # ------------------------------------------------------------------ the Backend contract

    def resolve_model(self) -> str:
        """The model id requests will use (asks the server when none was given)."""
        if self.model is None:
            models = self.list_models()
            if not models:
                raise RemoteError(f"the server at {self.base_url} offers no models")
            self.model = models[0]
        return self.model

    def submit(self, prompt: PromptInput, params: SamplingParams | None = None, *,
               on_delta: Callable[[str], None] | None = None,
               on_finish: Callable[[RequestOutput], None] | None = None,
               on_error: Callable[[BaseException], None] | None = None) -> RemoteHandle:
        """Send chat messages (to /chat/completions) or text or token ids (to /completions)."""
        handle = RemoteHandle(f"remote-{next(self._ids)}", on_delta, on_finish, on_error)
        with self._lock:
            self._live[handle.request_id] = handle
        threading.Thread(target=self._run, args=(handle, prompt, params or SamplingParams()),
                         name=f"folio-{handle.request_id}", daemon=True).start()
        return handle

    def describe(self) -> str:
        """For the status bar, as "model on device" is for the local engine."""
        return f"{self.model or 'default model'} at {self.base_url}"

    def stats(self) -> dict[str, float]:
        """The last answer's token counts, as the server reported them ({} before any)."""
        return dict(self._last_usage)

    def model_info(self) -> dict:
        """Nothing: a remote model's weights and KV memory are the server's, not Folio's to see."""
        return {}

    def count_tokens(self, prompt: PromptInput) -> int:
        """An estimate on the cautious side: the server's tokenizer is not ours to run."""
        if isinstance(prompt, str):
            return len(prompt) // CHARS_PER_TOKEN + 1
        if prompt and isinstance(prompt[0], dict):
            return sum(self.count_tokens(str(m.get("content") or "")) + MESSAGE_OVERHEAD_TOKENS for m in prompt)
        return len(prompt)

    def shutdown(self, timeout: float | None = 10.0) -> None:
        with self._lock:
            live = list(self._live.values())
        for handle in live:
            handle.cancel()
        for handle in live:
            handle.wait(timeout)
        self._client.close()

    # ------------------------------------------------------------------ connection check

    def list_models(self) -> list[str]:
        url = f"{self.base_url}/models"
        try:
            response = self._client.get(url)
        except httpx.HTTPError as e:
            raise self._user_error(e) or e
        if response.status_code == 404:
            raise RemoteError(f"no OpenAI-compatible API at {self.base_url} (GET /models: 404); "
                              f"the URL usually ends in /v1", 404)
        if response.status_code != 200:
            raise _status_error(response)
        try:
            return [m["id"] for m in response.json()["data"]]
        except (ValueError, KeyError, TypeError) as e:
            raise RemoteError(f"{self.base_url} did not answer like an OpenAI-compatible server") from e

    def test_connection(self) -> str:
        """A line for the settings page on success; a `RemoteError` saying what is wrong."""
        models = self.list_models()
        if self.model is not None and self.model not in models:
            offered = ", ".join(models) or "none"
            raise RemoteError(f"connected, but {self.base_url} has no model {self.model!r}; it offers: {offered}")
        model = self.model or (models[0] if models else None)
        if model is None:
            raise RemoteError(f"connected, but {self.base_url} offers no models")
        return f"Connected to {self.base_url}: {model} ({len(models)} model{'s' * (len(models) != 1)} offered)"

    # ------------------------------------------------------------------ one request, in its thread

    def _run(self, handle: RemoteHandle, prompt: PromptInput, params: SamplingParams) -> None:
        stream = _Stream(arrival_time=time.perf_counter())
        try:
            path, body = self._request(prompt, params)
            with self._client.stream("POST", f"{self.base_url}{path}", json=body) as response:
                handle.attach(response)
                try:
                    if response.status_code != 200:
                        response.read()
                        raise _status_error(response)
                    stream.read(_sse_data(response.iter_lines()), handle)
                finally:
                    handle.detach()
            if not stream.complete and not handle.cancelled:
                raise RemoteError(f"{self.base_url} closed the stream before the answer was complete")
        except Exception as e:
            if not handle.cancelled:
                self._forget(handle)
                handle.fail(e if isinstance(e, RemoteError) else self._user_error(e) or e)
                return
        self._forget(handle)
        cut = handle.cancelled and not stream.complete
        output = stream.output(handle.request_id, prompt, "abort" if cut else None)
        if stream.usage:
            self._last_usage = stream.usage
        handle.finish(output)

    def _request(self, prompt: PromptInput, params: SamplingParams) -> tuple[str, dict]:
        if params.n != 1:
            raise RemoteError("a remote chat takes one sample per request (n=1)")
        body: dict = {"model": self.resolve_model(), "stream": True, "stream_options": {"include_usage": True},
                      "max_tokens": params.max_tokens, "temperature": params.temperature, "top_p": params.top_p}
        if params.seed is not None:
            body["seed"] = params.seed
        if params.stop:
            body["stop"] = list(params.stop)
        # Not OpenAI's, but vLLM's and llama.cpp's: sent only when asked for, since OpenAI
        # itself refuses fields it does not know.
        for name, default in (("top_k", 0), ("min_p", 0.0), ("repetition_penalty", 1.0), ("ignore_eos", False)):
            if getattr(params, name) != default:
                body[name] = getattr(params, name)
        if isinstance(prompt, list) and prompt and isinstance(prompt[0], dict):
            return "/chat/completions", {**body, "messages": prompt}
        return "/completions", {**body, "prompt": prompt}

    def _forget(self, handle: RemoteHandle) -> None:
        with self._lock:
            self._live.pop(handle.request_id, None)

    def _user_error(self, error: Exception) -> RemoteError | None:
        """The message for a failure the user can fix (URL, network, server); None for a bug."""
        if isinstance(error, httpx.TimeoutException):
            return RemoteError(f"no answer from {self.base_url} within {self.timeout:g} s")
        if isinstance(error, httpx.ConnectError):
            return RemoteError(f"cannot connect to {self.base_url}: {_reason(error)}")
        if isinstance(error, httpx.UnsupportedProtocol | httpx.InvalidURL):
            return RemoteError(f"{self.base_url} is not a valid server URL ({error})")
        if isinstance(error, httpx.TransportError):
            return RemoteError(f"the connection to {self.base_url} broke: {_reason(error)}")
        if isinstance(error, json.JSONDecodeError):
            return RemoteError(f"{self.base_url} did not answer like an OpenAI-compatible server")
        return None


class _Stream:
    """What one streamed answer has brought so far."""

    def __init__(self, arrival_time: float) -> None:
        self.arrival_time = arrival_time
        self.first_token_time: float | None = None
        self.pieces: list[str] = []
        self.finish_reason: str | None = None
        self.usage: dict[str, float] = {}
        self.complete = False

    def read(self, events: Iterable[str], handle: RemoteHandle) -> None:
        for data in events:
            if handle.cancelled:
                return
            if data == "[DONE]":
                self.complete = True
                return
            chunk = json.loads(data)
            if chunk.get("error"):
                raise RemoteError(f"the server failed: {_error_message(chunk)}")
            for choice in chunk.get("choices") or []:
                text = (choice.get("delta") or {}).get("content") if "delta" in choice else choice.get("text")
                if text:
                    if self.first_token_time is None:
                        self.first_token_time = time.perf_counter()
                    self.pieces.append(text)
                    handle.add_delta(text)
                self.finish_reason = choice.get("finish_reason") or self.finish_reason
            if usage := chunk.get("usage"):
                self.usage = {
                    "prompt_tokens": usage.get("prompt_tokens") or 0,
                    "cached_tokens": (usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0,
                    "completion_tokens": usage.get("completion_tokens") or 0,
                }
        # Some servers end without [DONE]; a finish reason says the answer is whole.
        self.complete = self.finish_reason is not None

    def output(self, request_id: str, prompt: PromptInput, finish_reason: str | None) -> RequestOutput:
        """Token counts come from the server's usage; without it (a cancelled stream) each
        streamed piece counts as one token, which is what servers send."""
        text = "".join(self.pieces)
        metrics = RequestMetrics(
            num_prompt_tokens=int(self.usage.get("prompt_tokens", 0)),
            num_cached_tokens=int(self.usage.get("cached_tokens", 0)),
            num_generated_tokens=int(self.usage.get("completion_tokens", len(self.pieces))),
            arrival_time=self.arrival_time, first_token_time=self.first_token_time,
            finish_time=time.perf_counter())
        prompt_ids = list(prompt) if isinstance(prompt, list) and prompt and isinstance(prompt[0], int) else []
        completion = CompletionOutput(0, text, [], finish_reason or self.finish_reason or "stop")
        return RequestOutput(request_id, prompt_ids, [completion], True, metrics)


def test_connection(base_url: str, api_key: str | None = None, model: str | None = None,
                    timeout: float = 10.0) -> str:
    """The settings page's "Test connection" button: a success line, or a `RemoteError`."""
    with RemoteBackend(base_url, api_key, model, timeout) as remote:
        return remote.test_connection()


def _sse_data(lines: Iterator[str]) -> Iterator[str]:
    """The data of each server-sent event (several data lines join with newlines)."""
    data: list[str] = []
    for line in lines:
        if not line:
            if data:
                yield "\n".join(data)
                data = []
        elif line.startswith("data:"):
            data.append(line[5:].removeprefix(" "))
    if data:
        yield "\n".join(data)


def _status_error(response: httpx.Response) -> RemoteError:
    status = response.status_code
    try:
        message = _error_message(response.json())
    except ValueError:
        message = response.text.strip()[:200] or response.reason_phrase
    if status in (401, 403):
        return RemoteError(f"the server refused the API key ({status}): {message}", status)
    return RemoteError(f"the server answered {status}: {message}", status)


def _error_message(body) -> str:
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        return str(error.get("message") or error)
    if error:
        return str(error)
    return str(body.get("detail", body)) if isinstance(body, dict) else str(body)


def _reason(error: Exception) -> str:
    """The innermost OS reason ("Connection refused") rather than httpx's wrapping."""
    cause: BaseException | None = error
    while cause is not None:
        if isinstance(cause, OSError) and cause.strerror:
            return cause.strerror.lower()
        cause = cause.__cause__ or cause.__context__
    return str(error) or type(error).__name__


def _shut(sock: socket.socket | None) -> None:
    if sock is not None:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:  # already closed
            pass
