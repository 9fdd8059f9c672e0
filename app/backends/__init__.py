"""Who answers: the local engine (`LocalBackend`) or an OpenAI-compatible server (`RemoteBackend`),
behind one `Backend` contract, chosen by one function, `open_backend(spec)`; and `user_message`,
the one way a failure becomes words. Imports neither Qt nor torch."""
from app.backends.choice import BackendSpec, LocalSpec, RemoteSpec, open_backend
from app.backends.errors import BackendError, RemoteError, is_user_error, user_message
from app.backends.protocol import AnswerHandle, Backend, PromptInput

__all__ = ["AnswerHandle", "Backend", "BackendError", "BackendSpec", "LocalSpec", "PromptInput", "RemoteError",
           "RemoteSpec", "is_user_error", "open_backend", "user_message"]
