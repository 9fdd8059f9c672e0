"""`folio serve`'s web app: OpenAI's endpoints over one local backend.

The engine thread owns the device, and tokenizes: handlers only submit prompts (text, token ids
or chat messages) and cancel. The handles' callbacks run on the engine thread and reach the event
loop through `call_soon_threadsafe` (`EngineRequests`). A response starts once every request of it
has been accepted and has its first token, so a prompt the engine refuses (too long, empty, bad
ids) is a 400, streamed or not. A client that goes away has its requests cancelled at once, so
their KV blocks go back to the pool, and its embedding work stops at the next batch.

What one request may ask is bounded (`ServerLimits`): its body's size, its number of embedding
inputs, and `max_tokens`, which is clamped to the context (the answer then ends there, with
finish_reason "length", as llama.cpp's server does) rather than refused.
"""
from __future__ import annotations

import asyncio
import hmac
import json
import logging
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from urllib.parse import urlsplit

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.backends import AnswerHandle, PromptInput, is_user_error, user_message
from app.backends.local import LocalBackend
from app.server import schema
from app.server.body_limit import LimitRequestBody
from app.server.limits import ServerLimits
from app.server.schema import APIError, ChatCompletionRequest, CompletionRequest, EmbeddingRequest
from engine import RequestError, RequestOutput, SamplingParams

MAX_CHOICES = 64  # n x prompts in one HTTP request
COMPLETIONS_DEFAULT_MAX_TOKENS = 16  # OpenAI's default for /v1/completions
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
log = logging.getLogger("uvicorn.error")  # the server's own log, which uvicorn prints


def bundled_embedder():
    from rag.embedder import Embedder
    return Embedder()


def create_app(backend: LocalBackend, embedder_factory: Callable[[], object] | None = bundled_embedder,
               api_key: str | None = None, model_name: str | None = None, aliases: Sequence[str] = (),
               loopback_only: bool = False, limits: ServerLimits = ServerLimits()) -> FastAPI:
    """The app for a loaded model. `model_name` is the id clients see (default: the model's
    name); `aliases` are accepted too. `embedder_factory` makes the `/v1/embeddings` model (None:
    no embeddings). `loopback_only` (a server bound to loopback) refuses requests not addressed to
    this machine. `limits` bounds what one request may ask."""
    names = [model_name or backend.model_name, *aliases]
    server = OpenAIServer(backend, list(dict.fromkeys(names)),
                          embedder_factory() if embedder_factory is not None else None, limits)
    app = FastAPI(title="Folio", docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(LimitRequestBody, max_bytes=limits.max_request_bytes)  # after the key and host checks
    if api_key:
        app.add_middleware(RequireKey, api_key=api_key)
    if loopback_only:  # added last: checked first
        app.add_middleware(RequireLoopbackHost)
    app.add_exception_handler(APIError, _api_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _server_error)
    app.get("/v1/models")(server.models)
    app.get("/v1/models/{model_id:path}")(server.model)
    app.post("/v1/chat/completions")(server.chat_completions)
    app.post("/v1/completions")(server.completions)
    app.post("/v1/embeddings")(server.embeddings)
    app.get("/folio/stats")(server.stats)
    return app


# ---------------------------------------------------------------------------------- engine bridge

@dataclass
class Event:
    index: int  # which engine request (choice) of the HTTP request
    kind: str  # "delta", "finish" or "error"
    payload: str | RequestOutput | BaseException


class EngineRequests:
    """The engine requests behind one HTTP request, their callbacks turned into one asyncio
    queue. Must be made on the event loop."""

    def __init__(self, backend: LocalBackend) -> None:
        self._backend = backend
        self._loop = asyncio.get_running_loop()
        self._events: asyncio.Queue[Event] = asyncio.Queue()
        self._early: list[Event] = []  # read by `started`, replayed by `events`
        self.handles: list[AnswerHandle] = []

    def submit(self, prompt: PromptInput, params: SamplingParams) -> None:
        post = partial(self._post, len(self.handles))
        self.handles.append(self._backend.submit(
            prompt, params, on_delta=partial(post, "delta"), on_finish=partial(post, "finish"),
            on_error=partial(post, "error")))

    def _post(self, index: int, kind: str, payload) -> None:  # on the engine thread
        try:
            self._loop.call_soon_threadsafe(self._events.put_nowait, Event(index, kind, payload))
        except RuntimeError:  # the event loop is closed: the server is shutting down
            pass

    async def started(self) -> Event | None:
        """Wait until every request has its first event; the first error, if one comes instead."""
        heard: set[int] = set()
        while len(heard) < len(self.handles):
            event = await self._events.get()
            self._early.append(event)
            if event.kind == "error":
                return event
            heard.add(event.index)
        return None

    async def events(self) -> AsyncIterator[Event]:
        """Every delta, then one "finish" or "error" per request."""
        open_requests = len(self.handles)
        while open_requests:
            event = self._early.pop(0) if self._early else await self._events.get()
            if event.kind != "delta":
                open_requests -= 1
            yield event

    def cancel(self) -> None:
        """Stop what is still running; the engine frees its blocks."""
        for handle in self.handles:
            if not handle.done:
                handle.cancel()


# ---------------------------------------------------------------------------------- endpoints

@dataclass
class Reply:
    """The id, model and shape (chat or text) every piece of one answer carries."""

    chat: bool
    model: str
    n: int  # samples per prompt
    include_usage: bool = False
    id: str = field(init=False)
    created: int = field(default_factory=lambda: int(time.time()))

    def __post_init__(self) -> None:
        self.id = ("chatcmpl-" if self.chat else "cmpl-") + uuid.uuid4().hex

    def chunk(self, index: int, text: str, finish_reason: str | None = None) -> dict:
        if self.chat:
            return schema.chat_chunk(self.id, self.created, self.model, index,
                                     {"content": text} if text else {}, finish_reason)
        return schema.completion_chunk(self.id, self.created, self.model, index, text, finish_reason)

    def role_chunk(self, index: int) -> dict:
        return schema.chat_chunk(self.id, self.created, self.model, index, {"role": "assistant", "content": ""})

    def usage_chunk(self, outputs: dict[int, RequestOutput]) -> dict:
        usage = self.usage(outputs)
        if self.chat:
            return schema.chat_chunk(self.id, self.created, self.model, None, {}, usage=usage)
        return schema.completion_chunk(self.id, self.created, self.model, None, "", usage=usage)

    def full(self, outputs: dict[int, RequestOutput]) -> dict:
        choices = [(outputs[i].text, outputs[i].finish_reason) for i in sorted(outputs)]
        build = schema.chat_completion if self.chat else schema.completion
        return build(self.id, self.created, self.model, choices, self.usage(outputs))

    def usage(self, outputs: dict[int, RequestOutput]) -> dict:
        """Each prompt counts once (its first sample), every sample's tokens count."""
        firsts = [o for i, o in outputs.items() if i % self.n == 0]
        return schema.usage(sum(o.metrics.num_prompt_tokens for o in firsts),
                            sum(o.metrics.num_generated_tokens for o in outputs.values()),
                            sum(o.metrics.num_cached_tokens for o in firsts))


class OpenAIServer:
    """The endpoints, bound to one engine thread and the ids it answers to."""

    def __init__(self, backend: LocalBackend, model_ids: list[str], embedder, limits: ServerLimits) -> None:
        self.backend = backend
        self.model_ids = model_ids
        self.embedder = embedder
        self.limits = limits
        self.created = int(time.time())

    # ------------------------------------------------------------------ models and stats

    async def models(self) -> dict:
        return {"object": "list", "data": [schema.model_card(m, self.created) for m in self._all_models()]}

    async def model(self, model_id: str) -> dict:
        if model_id not in self._all_models():
            raise self._unknown_model(model_id)
        return schema.model_card(model_id, self.created)

    async def stats(self) -> dict:
        """The engine's KV and scheduler numbers (Folio's own endpoint, not OpenAI's)."""
        return self.backend.stats()

    def _all_models(self) -> list[str]:
        return self.model_ids + ([self.embedder.model_name] if self.embedder is not None else [])

    def _unknown_model(self, name: str) -> APIError:
        return APIError(404, f"The model `{name}` does not exist on this server; it serves "
                             f"{', '.join(self._all_models())}", param="model", code="model_not_found")

    def _chat_model(self, name: str | None) -> str:
        if name is None:
            return self.model_ids[0]
        if name not in self.model_ids:
            raise self._unknown_model(name)
        return name

    # ------------------------------------------------------------------ generation

    async def chat_completions(self, body: ChatCompletionRequest, request: Request) -> Response:
        model = self._chat_model(body.model)
        if body.logprobs:
            raise APIError(400, "logprobs are not supported by this server", param="logprobs")
        if not body.messages:
            raise APIError(400, "messages must not be empty", param="messages")
        self._check_choices(body.n)
        messages = [m.as_template_message() for m in body.messages]
        max_tokens = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
        if max_tokens is None:  # as OpenAI does: the rest of the context, where the engine stops
            max_tokens = self.backend.max_model_len
        return await self._generate(request, body, Reply(True, model, body.n, body.include_usage),
                                    [messages], max_tokens, "messages")

    async def completions(self, body: CompletionRequest, request: Request) -> Response:
        model = self._chat_model(body.model)
        if body.logprobs:
            raise APIError(400, "logprobs are not supported by this server", param="logprobs")
        prompts = body.prompts()
        if not prompts:
            raise APIError(400, "prompt must not be empty", param="prompt")
        self._check_choices(len(prompts) * body.n)
        max_tokens = body.max_tokens if body.max_tokens is not None else COMPLETIONS_DEFAULT_MAX_TOKENS
        return await self._generate(request, body, Reply(False, model, body.n, body.include_usage), prompts,
                                    max_tokens, "prompt")

    @staticmethod
    def _check_choices(count: int) -> None:
        if count < 1:
            raise APIError(400, "n must be at least 1", param="n")
        if count > MAX_CHOICES:
            raise APIError(400, f"at most {MAX_CHOICES} choices (n x prompts) per request, got {count}", param="n")

    async def _refusal(self, error: BaseException, prompt: PromptInput, param: str) -> APIError:
        """The 400 for a request the engine would not take; a prompt over the context says both
        lengths, as OpenAI does (counted here only once the engine has refused it)."""
        if isinstance(error, RequestError) and error.param == "prompt":
            limit, length = self.backend.max_model_len, await asyncio.to_thread(self.backend.count_tokens, prompt)
            if length >= limit:
                return APIError(400, f"This model's maximum context length is {limit} tokens, but the prompt is "
                                     f"{length} tokens long (at least one token must be left for the answer). "
                                     f"Shorten the {param}.", param=param, code="context_length_exceeded")
            return APIError(400, str(error), param=param)
        return _engine_error(error)

    def _sampling_params(self, body, max_tokens: int, sample: int) -> SamplingParams:
        """The engine's checks name the field of any bad value; `max_tokens` is then clamped to
        the context, where the engine stops anyway."""
        try:
            params = SamplingParams(
                max_tokens=max_tokens,
                temperature=1.0 if body.temperature is None else body.temperature,
                top_p=1.0 if body.top_p is None else body.top_p,
                top_k=body.top_k or 0, min_p=body.min_p or 0.0,
                repetition_penalty=1.0 if body.repetition_penalty is None else body.repetition_penalty,
                seed=None if body.seed is None else body.seed + sample,
                stop=[body.stop] if isinstance(body.stop, str) else list(body.stop or []),
                ignore_eos=body.ignore_eos)
        except RequestError as e:
            raise APIError(400, str(e), param=e.param) from e
        params.max_tokens = min(params.max_tokens, self.backend.max_model_len)
        return params

    async def _generate(self, request: Request, body, reply: Reply, prompts: list[PromptInput],
                        max_tokens: int, param: str) -> Response:
        """n samples per prompt, each its own engine request (the prefix cache shares their
        prompt blocks); choice i*n + s is sample s of prompt i."""
        params = [self._sampling_params(body, max_tokens, s) for s in range(body.n)]
        requests = EngineRequests(self.backend)
        for prompt in prompts:
            for p in params:
                requests.submit(prompt, p)
        try:
            started = await _unless_disconnected(requests.started(), request)
        except ClientGone:
            requests.cancel()
            return Response(status_code=499)
        if started is not None:  # refused: nothing was sent yet, so the answer is a plain error
            requests.cancel()
            raise await self._refusal(started.payload, prompts[started.index // body.n], param)
        if body.stream:
            return EngineStream(self._stream(requests, reply), requests)
        return await self._collect(requests, reply, request)

    async def _stream(self, requests: EngineRequests, reply: Reply) -> AsyncIterator[str]:
        outputs: dict[int, RequestOutput] = {}
        if reply.chat:
            for i in range(len(requests.handles)):
                yield _sse(reply.role_chunk(i))
        async for event in requests.events():
            if event.kind == "delta":
                yield _sse(reply.chunk(event.index, event.payload))
            elif event.kind == "finish":
                outputs[event.index] = event.payload
                yield _sse(reply.chunk(event.index, "", event.payload.finish_reason))
            else:
                yield _sse(_engine_error(event.payload).body())
                break
        else:
            if reply.include_usage:
                yield _sse(reply.usage_chunk(outputs))
        yield "data: [DONE]\n\n"

    async def _collect(self, requests: EngineRequests, reply: Reply, request: Request) -> Response:
        outputs: dict[int, RequestOutput] = {}

        async def gather() -> None:
            async for event in requests.events():
                if event.kind == "finish":
                    outputs[event.index] = event.payload
                elif event.kind == "error":
                    raise _engine_error(event.payload)

        try:
            await _unless_disconnected(gather(), request)
        except ClientGone:  # nobody is left to read the answer
            return Response(status_code=499)
        finally:
            requests.cancel()
        return JSONResponse(reply.full(outputs))

    # ------------------------------------------------------------------ embeddings

    async def embeddings(self, body: EmbeddingRequest, request: Request) -> Response:
        if self.embedder is None:
            raise APIError(404, "this server has no embedding model", param="model", code="model_not_found")
        model = self.embedder.model_name
        if body.model is not None and body.model != model:
            raise self._unknown_model(body.model)
        texts = body.texts()
        if len(texts) > self.limits.max_embedding_inputs:
            raise APIError(400, f"at most {self.limits.max_embedding_inputs} inputs per embeddings request, got "
                                f"{len(texts)}: send them in several requests (`folio serve --max-embedding-inputs` "
                                f"sets the limit)", param="input")
        stop = threading.Event()
        try:
            vectors, tokens = await _unless_disconnected(asyncio.to_thread(self._embed, texts, stop), request)
        except ClientGone:
            return Response(status_code=499)
        finally:
            stop.set()  # the embedder stops after its current batch
        if body.dimensions is not None and body.dimensions != vectors.shape[1]:
            raise APIError(400, f"{model} makes {vectors.shape[1]}-dimensional embeddings; "
                                f"dimensions={body.dimensions} is not supported", param="dimensions")
        return JSONResponse(schema.embeddings(model, vectors, body.encoding_format, tokens))

    def _embed(self, texts: list[str], stop: threading.Event):
        """On a worker thread; `stop` is checked between the embedder's batches."""
        def check(done: int) -> None:
            if stop.is_set():
                raise EmbeddingStopped(done)

        try:
            vectors = self.embedder.embed(texts, progress=check)
        except EmbeddingStopped as e:
            log.info("embedding stopped after %d of %d inputs: the client left", e.done, len(texts))
            raise
        return vectors, sum(self.embedder.count_tokens(t) for t in texts)


# ---------------------------------------------------------------------------------- plumbing

class EngineStream(StreamingResponse):
    """A server-sent-events answer that cancels its engine requests however it ends. The
    generator's own cleanup is not enough: when the client is gone before the first chunk,
    Starlette cancels the response before the generator has started, so its `finally` never runs."""

    def __init__(self, chunks: AsyncIterator[str], requests: EngineRequests) -> None:
        super().__init__(chunks, media_type="text/event-stream", headers=SSE_HEADERS)
        self.requests = requests

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.requests.cancel()


class RequireKey:
    """Every request must carry `Authorization: Bearer KEY` (checked before the body is read,
    so a wrong key is a 401 whatever the body holds)."""

    def __init__(self, app, api_key: str) -> None:
        self.app = app
        self.expected = f"Bearer {api_key}".encode()

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http":
            given = dict(scope["headers"]).get(b"authorization", b"")
            if not hmac.compare_digest(given, self.expected):
                message = ("Incorrect API key provided." if given else
                           "No API key provided: send the header 'Authorization: Bearer KEY'.")
                error = APIError(401, message, code="invalid_api_key")
                await JSONResponse(error.body(), status_code=401)(scope, receive, send)
                return
        await self.app(scope, receive, send)


class RequireLoopbackHost:
    """Every request must name this machine in its Host header. A web page whose domain was
    rebound to 127.0.0.1 (DNS rebinding) sends its own name there; without this check it could
    use a keyless loopback server through the user's browser."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and _host_name(scope) not in LOOPBACK_NAMES:
            error = APIError(403, "This server only answers requests addressed to localhost, 127.0.0.1 or [::1].",
                             code="invalid_host")
            await JSONResponse(error.body(), status_code=403)(scope, receive, send)
            return
        await self.app(scope, receive, send)


def _host_name(scope) -> str | None:
    """The name in the Host header, without port or brackets ("[::1]:8000" -> "::1")."""
    host = dict(scope["headers"]).get(b"host", b"").decode("latin-1")
    try:
        return urlsplit("//" + host).hostname
    except ValueError:  # "[::1" and the like
        return None


class ClientGone(Exception):
    """The client hung up before its answer was ready."""


class EmbeddingStopped(Exception):
    """Embedding stopped between batches, its client gone."""

    def __init__(self, done: int) -> None:
        super().__init__(done)
        self.done = done


async def _unless_disconnected(work, request: Request):
    """`await work`, unless the client hangs up first (ClientGone; the work is cancelled)."""
    answer = asyncio.ensure_future(work)
    gone = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({answer, gone}, return_when=asyncio.FIRST_COMPLETED)
        if not answer.done():
            raise ClientGone
        return answer.result()
    finally:
        gone.cancel()
        answer.cancel()


async def _disconnected(request: Request) -> None:
    """Returns when the client hangs up (the body has been read: the next message is that)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


def _engine_error(error: BaseException) -> APIError:
    if is_user_error(error):  # a request the engine will not run (too long, a bad sampling value)
        return APIError(400, user_message(error), param=getattr(error, "param", None))
    return APIError(500, f"the engine failed: {user_message(error)}", type="server_error")


def _sse(payload: dict) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False, separators=(',', ':'))}\n\n"


async def _api_error(request: Request, error: APIError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status)


async def _validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
    """FastAPI says 422; OpenAI clients expect 400 for a bad body, malformed JSON included."""
    problems = error.errors()
    first = problems[0] if problems else {}
    if first.get("type") == "json_invalid":
        reason = first.get("ctx", {}).get("error", "")
        message, param = f"The request body is not valid JSON ({reason}).", None
    else:
        seen: dict[str, str] = {}  # one complaint per field (a union field gives one per branch)
        for p in problems:
            where = ".".join(str(x) for x in p.get("loc", ()) if x != "body")
            field = where.split(".")[0]
            seen.setdefault(field, f"{where}: {p.get('msg')}" if field else "the body must be a JSON object")
        message, param = "Invalid request: " + "; ".join(seen.values()), next(iter(seen), None) or None
    return JSONResponse(schema.error_body(message, param=param), status_code=400)


async def _http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
    code = "not_found" if error.status_code == 404 else None
    return JSONResponse(schema.error_body(str(error.detail), param=None, code=code),
                        status_code=error.status_code, headers=getattr(error, "headers", None))


async def _server_error(request: Request, error: Exception) -> JSONResponse:
    return JSONResponse(schema.error_body(f"internal error: {error}", type="server_error"), status_code=500)
