"""The engine's error vocabulary, importable without torch (the GUI thread uses it).

`RequestError` is a request the user got wrong (a prompt too long, a bad sampling value): it fails
that request alone and its message is meant for a person. `ModelLoadError` is a model that cannot
be opened. Anything else raised by the engine is a bug or a device failure.
"""
from __future__ import annotations


class RequestError(ValueError):
    """One request cannot run as asked; `param` names the offending field when there is one."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


class ModelLoadError(RuntimeError):
    """The model path is missing, incomplete or not a model Folio can run."""
