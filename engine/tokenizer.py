"""Text <-> token ids: the model's own tokenizer and chat template, and streaming detokenization."""
from __future__ import annotations

from pathlib import Path

from transformers import AutoTokenizer

from engine.errors import RequestError


class Tokenizer:
    def __init__(self, folder: Path) -> None:
        self.hf = AutoTokenizer.from_pretrained(str(folder))
        # Streaming decodes a few tokens per sequence per step; the Rust tokenizer itself is ~3x
        # faster than transformers' wrapper around it, which re-checks every id in Python.
        self._fast = getattr(self.hf, "backend_tokenizer", None)

    @property
    def eos_token_id(self) -> int | None:
        return self.hf.eos_token_id

    def encode(self, text: str) -> list[int]:
        return self.hf.encode(text, add_special_tokens=True)

    def decode(self, ids: list[int]) -> str:
        if self._fast is not None:
            return self._fast.decode(ids, skip_special_tokens=True)
        return self.hf.decode(ids, skip_special_tokens=True)

    def apply_chat_template(self, messages: list[dict]) -> list[int]:
        """Render a conversation with the model's template and the assistant turn opened."""
        if getattr(self.hf, "chat_template", None) is None:
            raise RequestError("this model has no chat template: send it plain text, not chat messages", "messages")
        text = self.hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return self.hf.encode(text, add_special_tokens=False)

    def prompt_ids(self, prompt: str | list[int] | list[dict]) -> list[int]:
        """Any prompt the engine takes: plain text, chat messages ({"role", "content"}), or ids."""
        if isinstance(prompt, str):
            return self.encode(prompt)
        if prompt and isinstance(prompt[0], dict):
            return self.apply_chat_template(prompt)
        return list(prompt)


class IncrementalDetokenizer:
    """Turns a growing list of token ids into text deltas.

    Byte-level BPE splits characters across tokens, so text is emitted only up to the last
    complete character: a trailing U+FFFD means "wait for the next token".
    """

    def __init__(self, tokenizer: Tokenizer, prompt_ids: list[int]) -> None:
        self.tokenizer = tokenizer
        # A few prompt tokens of context make the first output token decode with its leading space.
        self.ids = list(prompt_ids[-4:])
        self.prefix_offset = 0
        self.read_offset = len(self.ids)
        self.text = ""

    def add(self, token_id: int) -> str:
        self.ids.append(token_id)
        prefix = self.tokenizer.decode(self.ids[self.prefix_offset:self.read_offset])
        full = self.tokenizer.decode(self.ids[self.prefix_offset:])
        if len(full) <= len(prefix) or full.endswith("\ufffd"):
            return ""
        delta = full[len(prefix):]
        self.prefix_offset, self.read_offset = self.read_offset, len(self.ids)
        self.text += delta
        return delta
