"""Folio's failures in words: `user_message(exc)` is the one line a person reads, in the terminal,
in the window and in a settings page.

Errors a user can cause or fix say so in their message (`is_user_error`); anything else is a bug
or a broken device, and reads as its type and text (its traceback belongs in the log). Library
classes are recognised without importing their libraries: an exception of a module that was never
imported cannot have been raised.
"""
from __future__ import annotations

import sys

from engine.errors import ModelLoadError, RequestError

OUT_OF_MEMORY = ("The device ran out of memory. Try a shorter context length or a smaller model, "
                 "or run on the CPU.")


class BackendError(Exception):
    """The backend cannot start (a missing GPU, a model that will not load); the message is for the user."""


class RemoteError(Exception):
    """A remote server could not be used, or refused a request; the message says why. `status` is
    the HTTP status when the server answered one."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


def user_message(error: BaseException) -> str:
    """One line for the person at the keyboard."""
    if isinstance(error, ModelLoadError):
        return f"Cannot load the model: {error}"
    if _is_out_of_memory(error):
        return OUT_OF_MEMORY
    if is_user_error(error):
        return str(error) or type(error).__name__
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__


def is_user_error(error: BaseException) -> bool:
    """Whether the error is the user's to fix (a request, a file, a server, the memory), not a bug."""
    return isinstance(error, (RequestError, ModelLoadError, BackendError, RemoteError, *_library_errors())) \
        or _is_out_of_memory(error)


def _is_out_of_memory(error: BaseException) -> bool:
    torch = sys.modules.get("torch")
    gpu = getattr(torch, "OutOfMemoryError", None) if torch is not None else None
    return isinstance(error, MemoryError) or (gpu is not None and isinstance(error, gpu))


def _library_errors() -> tuple[type[BaseException], ...]:
    """rag's DocumentError (a file that cannot be read) and LibraryError (a library in use or damaged)."""
    found = []
    for module, name in (("rag.loaders", "DocumentError"), ("rag.store", "LibraryError")):
        cls = getattr(sys.modules.get(module), name, None)
        if cls is not None:
            found.append(cls)
    return tuple(found)
