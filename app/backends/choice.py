"""Choosing who answers: `open_backend(spec)` is the one place that turns a choice (the local model
on a device, or an OpenAI-compatible server) into a ready `Backend`. The CLI makes its spec from
arguments (`spec_from_args`), the server from its own, the GUI from its settings.
"""
from __future__ import annotations

import argparse
import os
from dataclasses import dataclass

from app.backends.errors import BackendError, RemoteError
from app.backends.protocol import Backend

DEVICES = ("auto", "cpu", "cuda")
# The app keeps the KV blocks of long prompts on disk (engine/kv_tiers), at most this much per
# model; a LocalSpec's config may say otherwise (disk_kv_cache=0 turns it off).
DISK_KV_CACHE = "4GiB"


@dataclass(frozen=True)
class LocalSpec:
    """The engine on this machine. `config`: more EngineConfig fields, as sorted (name, value) pairs
    so that two equal choices compare equal (the GUI reloads only when the choice changes)."""

    model: str | None = None          # a Hugging Face folder or a .gguf file; None: the bundled model
    device: str = "auto"
    config: tuple[tuple[str, object], ...] = ()

    @classmethod
    def of(cls, model: str | None = None, device: str = "auto", **config) -> LocalSpec:
        return cls(model, device, tuple(sorted(config.items())))


@dataclass(frozen=True)
class RemoteSpec:
    """An OpenAI-compatible server (vLLM, SGLang, llama.cpp, another machine's `folio serve`)."""

    url: str
    api_key: str | None = None
    model: str | None = None          # None: the server's first model


BackendSpec = LocalSpec | RemoteSpec


def open_backend(spec: BackendSpec) -> Backend:
    """Start the backend and wait until it can answer (seconds for a local model: call it off any
    thread that must stay responsive). Raises BackendError with a message for the user."""
    if isinstance(spec, RemoteSpec):
        return _open_remote(spec)
    return _open_local(spec)


def check_device(device: str) -> None:
    """A CUDA device that was asked for must exist (imports torch)."""
    if device == "cuda":
        import torch
        if not torch.cuda.is_available():
            raise BackendError("the device is set to CUDA, but no CUDA GPU is available; choose auto or cpu")


def _open_local(spec: LocalSpec) -> Backend:
    from app.backends.local import LocalBackend
    from engine import EngineThread, ModelLoadError

    check_device(spec.device)
    config = {"disk_kv_cache": DISK_KV_CACHE, **dict(spec.config)}
    engine_thread = EngineThread(spec.model, device=spec.device, **config)
    try:
        return LocalBackend(engine_thread)
    except Exception as e:  # (Ctrl+C cannot stop a load: the engine thread is a daemon)
        engine_thread.shutdown()
        if isinstance(e, ModelLoadError):
            raise BackendError(f"cannot load the model: {e}") from None
        raise


def _open_remote(spec: RemoteSpec) -> Backend:
    from app.backends.remote import RemoteBackend
    try:
        backend = RemoteBackend(spec.url, spec.api_key, spec.model)
    except RemoteError as e:  # a malformed URL
        raise BackendError(str(e)) from None
    try:
        backend.resolve_model()  # a wrong URL or key fails here, not on the first question
    except RemoteError as e:
        backend.shutdown()
        raise BackendError(str(e)) from None
    return backend


# ---------------------------------------------------------------------------------- the command line

def add_local_model_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", metavar="PATH",
                   help="a Hugging Face model folder or a .gguf file (default: the bundled SmolLM2)")
    p.add_argument("--device", choices=DEVICES, default="auto",
                   help="where the model runs (default: %(default)s: the GPU if there is one)")


def add_backend_arguments(p: argparse.ArgumentParser) -> None:
    add_local_model_arguments(p)
    p.add_argument("--remote", metavar="URL",
                   help="use an OpenAI-compatible server (e.g. http://host:8000/v1) instead of the local model")
    p.add_argument("--remote-key", metavar="KEY", default=os.environ.get("FOLIO_REMOTE_KEY"),
                   help="API key for --remote (default: $FOLIO_REMOTE_KEY)")
    p.add_argument("--remote-model", metavar="NAME", help="model name on the --remote server (default: its first)")


def spec_from_args(args: argparse.Namespace, **config) -> BackendSpec:
    """What `add_backend_arguments` (or `add_local_model_arguments`) asked for."""
    if getattr(args, "remote", None):
        return RemoteSpec(args.remote, args.remote_key or None, args.remote_model or None)
    return LocalSpec.of(args.model, args.device, **config)
