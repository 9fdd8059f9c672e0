"""The OpenAI wire format `folio serve` speaks: request bodies in, response dicts out.

Only shapes live here (no engine, no web framework), so the server module reads as routing.
Fields clients send that Folio does not use are ignored, as OpenAI-compatible servers do; the
few it cannot honour (log-probabilities, images) are refused with a clear 400 instead.
"""
from __future__ import annotations

import base64
from typing import Literal

import numpy as np
from pydantic import BaseModel, StrictBool, StrictFloat, StrictInt, StrictStr

# Sampling fields take JSON values as they were sent: `true` is not 1 and "0.5" is not 0.5 (as
# pydantic's lax mode would have it); an integer is a number. Ranges are SamplingParams' to check.
Number = StrictFloat


class APIError(Exception):
    """An error the client caused or should see, sent as OpenAI's `{"error": {...}}` body."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    def body(self) -> dict:
        return error_body(self.message, self.type, self.param, self.code)


def error_body(message: str, type: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> dict:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


# ---------------------------------------------------------------------------------- requests

class StreamOptions(BaseModel):
    include_usage: bool = False


class SamplingFields(BaseModel):
    """What chat and text completions share. `top_k`, `min_p`, `repetition_penalty` and
    `ignore_eos` are extensions that vLLM and llama.cpp accept too."""

    model: StrictStr | None = None  # None: the one model served
    temperature: Number | None = None
    top_p: Number | None = None
    max_tokens: StrictInt | None = None
    stop: StrictStr | list[StrictStr] | None = None
    seed: StrictInt | None = None
    n: StrictInt = 1
    stream: StrictBool = False
    stream_options: StreamOptions | None = None
    top_k: StrictInt | None = None
    min_p: Number | None = None
    repetition_penalty: Number | None = None
    ignore_eos: StrictBool = False

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage


class ContentPart(BaseModel):
    type: str
    text: str | None = None


class RequestMessage(BaseModel):
    role: str
    content: str | list[ContentPart] | None = None

    def as_template_message(self) -> dict[str, str]:
        """{"role", "content"} with plain-text content, as the model's chat template expects."""
        role = "system" if self.role == "developer" else self.role
        if self.content is None or isinstance(self.content, str):
            return {"role": role, "content": self.content or ""}
        parts = []
        for part in self.content:
            if part.type != "text" or part.text is None:
                raise APIError(400, f"content parts of type {part.type!r} are not supported; "
                                    "this model reads text only", param="messages")
            parts.append(part.text)
        return {"role": role, "content": "".join(parts)}


class ChatCompletionRequest(SamplingFields):
    messages: list[RequestMessage]
    max_completion_tokens: StrictInt | None = None
    logprobs: bool | None = None


class CompletionRequest(SamplingFields):
    prompt: str | list[str] | list[int] | list[list[int]]
    logprobs: int | None = None

    def prompts(self) -> list[str | list[int]]:
        """One entry per prompt: text, or token ids."""
        p = self.prompt
        if isinstance(p, str) or (p and isinstance(p[0], int)):
            return [p]
        return list(p)


class EmbeddingRequest(BaseModel):
    model: str | None = None
    input: str | list[str] | list[int] | list[list[int]]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = None

    def texts(self) -> list[str]:
        if isinstance(self.input, str):
            return [self.input]
        if not self.input:
            raise APIError(400, "input must not be empty", param="input")
        if not all(isinstance(t, str) for t in self.input):
            raise APIError(400, "token ids are not supported for embeddings; send text", param="input")
        return list(self.input)


# ---------------------------------------------------------------------------------- responses

def usage(prompt_tokens: int, completion_tokens: int, cached_tokens: int) -> dict:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": cached_tokens},
    }


def chat_completion(id: str, created: int, model: str, choices: list[tuple[str, str | None]], usage: dict) -> dict:
    return {
        "id": id, "object": "chat.completion", "created": created, "model": model,
        "choices": [{"index": i, "message": {"role": "assistant", "content": text},
                     "logprobs": None, "finish_reason": reason}
                    for i, (text, reason) in enumerate(choices)],
        "usage": usage,
    }


def chat_chunk(id: str, created: int, model: str, index: int | None, delta: dict,
               finish_reason: str | None = None, usage: dict | None = None) -> dict:
    """A streamed piece; `index=None` makes the usage-only chunk, which has no choices."""
    choices = [] if index is None else [{"index": index, "delta": delta, "logprobs": None,
                                         "finish_reason": finish_reason}]
    return {"id": id, "object": "chat.completion.chunk", "created": created, "model": model,
            "choices": choices, "usage": usage}


def completion(id: str, created: int, model: str, choices: list[tuple[str, str | None]], usage: dict) -> dict:
    return {
        "id": id, "object": "text_completion", "created": created, "model": model,
        "choices": [{"index": i, "text": text, "logprobs": None, "finish_reason": reason}
                    for i, (text, reason) in enumerate(choices)],
        "usage": usage,
    }


def completion_chunk(id: str, created: int, model: str, index: int | None, text: str,
                     finish_reason: str | None = None, usage: dict | None = None) -> dict:
    choices = [] if index is None else [{"index": index, "text": text, "logprobs": None,
                                         "finish_reason": finish_reason}]
    return {"id": id, "object": "text_completion", "created": created, "model": model,
            "choices": choices, "usage": usage}


def embeddings(model: str, vectors: np.ndarray, encoding_format: str, prompt_tokens: int) -> dict:
    """base64 is little-endian float32, which the official client decodes with numpy."""
    def encode(v: np.ndarray):
        if encoding_format == "base64":
            return base64.b64encode(v.astype("<f4").tobytes()).decode("ascii")
        return v.tolist()

    return {
        "object": "list", "model": model,
        "data": [{"object": "embedding", "index": i, "embedding": encode(v)} for i, v in enumerate(vectors)],
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
    }


def model_card(model_id: str, created: int) -> dict:
    return {"id": model_id, "object": "model", "created": created, "owned_by": "folio"}
