"""The embedder's inputs for a batch of texts, tokenized in Rust.

What sentence-transformers' own `tokenize` makes (the model folder's tokenizer.json, truncated to
its max_seq_length with [CLS] and [SEP] counted, padded to the batch's longest), from one
`encode_batch` call of the `tokenizers` library. sentence-transformers 6's `tokenize` went through
a Python layer that held a GPU's indexing to its speed: on an H200 it tokenized 2,659 chunks/s
while the fp16 model ran 31,207 (BENCHMARKS.md, issue 14, Indexing speed).
"""
from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np


def max_seq_length(model_path: str) -> int:
    """The longest input, in word pieces with [CLS] and [SEP], that the model folder asks for."""
    return int(json.loads(Path(model_path, "sentence_bert_config.json").read_text(encoding="utf-8"))["max_seq_length"])


class BatchTokenizer:
    def __init__(self, model_path: str, max_length: int | None = None) -> None:
        from tokenizers import Tokenizer

        self.max_length = max_length or max_seq_length(model_path)
        self._tokenizer = Tokenizer.from_file(os.path.join(model_path, "tokenizer.json"))
        self._tokenizer.enable_truncation(self.max_length)
        self._tokenizer.enable_padding(pad_id=self._tokenizer.token_to_id("[PAD]") or 0, pad_token="[PAD]")

    def __call__(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(input ids, attention mask), int64 [n, longest]."""
        encoded = self._tokenizer.encode_batch(list(texts))
        return (np.array([e.ids for e in encoded], dtype=np.int64),
                np.array([e.attention_mask for e in encoded], dtype=np.int64))
