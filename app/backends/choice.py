"""Choosing where `folio chat` and `folio ask` run: the local engine, or an OpenAI-compatible
server given with `--remote` (a vLLM or SGLang cluster, another machine's `folio serve`).

Both backends have the `EngineThread` surface (`submit`, `wait_ready`, `stats`, `shutdown`), so
the commands only differ in how they start one and what they can know about it.
"""
from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass

REMOTE_CONTEXT_TOKENS = 8192   # assumed for a remote model: the API does not report its context
REMOTE_CHARS_PER_TOKEN = 3     # a cautious estimate, for budgeting a prompt without the tokenizer


def add_local_model_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", metavar="PATH",
                   help="a Hugging Face model folder or a .gguf file (default: the bundled SmolLM2)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                   help="where the model runs (default: %(default)s: the GPU if there is one)")


def add_backend_arguments(p: argparse.ArgumentParser) -> None:
    add_local_model_arguments(p)
    p.add_argument("--remote", metavar="URL",
                   help="use an OpenAI-compatible server (e.g. http://host:8000/v1) instead of the local model")
    p.add_argument("--remote-key", metavar="KEY", default=os.environ.get("FOLIO_REMOTE_KEY"),
                   help="API key for --remote (default: $FOLIO_REMOTE_KEY)")
    p.add_argument("--remote-model", metavar="NAME", help="model name on the --remote server (default: its first)")


@dataclass
class Backend:
    engine: object                      # EngineThread or RemoteEngine
    description: str                    # "SmolLM2… on cpu", "llama-3 at http://…/v1"
    count_tokens: Callable[[str], int]
    context_tokens: int


class BackendError(Exception):
    """The backend cannot start; the message is for the user."""


def user_errors() -> tuple[type[BaseException], ...]:
    """Errors an answer can end with that are not bugs: a prompt too long for the context, a
    remote server's refusal (RemoteError is a ValueError), no memory on the device."""
    errors: list[type[BaseException]] = [ValueError, MemoryError]
    torch = sys.modules.get("torch")
    if torch is not None and hasattr(torch, "OutOfMemoryError"):
        errors.append(torch.OutOfMemoryError)
    return tuple(errors)


def start_backend(args: argparse.Namespace) -> Backend:
    """Start the backend the arguments ask for and wait until it can answer."""
    if args.remote:
        from app.backends.remote import RemoteEngine, RemoteError
        try:
            engine = RemoteEngine(args.remote, args.remote_key, args.remote_model)
            model = engine.wait_ready()
        except RemoteError as e:
            raise BackendError(str(e)) from None
        return Backend(engine, f"{model} at {args.remote}",
                       lambda s: len(s) // REMOTE_CHARS_PER_TOKEN + 1, REMOTE_CONTEXT_TOKENS)

    engine_thread, engine = start_local(args.model, args.device)
    return Backend(engine_thread, f"{engine.model_path.name} on {engine.config.device}",
                   lambda s: len(engine.tokenizer.encode(s)), engine.max_model_len)


def check_device(device: str) -> None:
    if device == "cuda":
        import torch
        if not torch.cuda.is_available():
            raise BackendError("--device cuda was asked for, but no CUDA GPU is available")


def start_local(model: str | None, device: str, **config):
    """An `EngineThread` on a local model, loaded: (engine thread, its engine)."""
    from engine import EngineThread, ModelLoadError
    check_device(device)
    engine_thread = EngineThread(model, device=device, **config)
    try:
        return engine_thread, engine_thread.wait_ready()
    except ModelLoadError as e:
        raise BackendError(f"cannot load the model: {e}") from None
