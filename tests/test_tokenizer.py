"""Incremental detokenization never emits half a character, and adds up to the full decode."""
from engine.tokenizer import IncrementalDetokenizer, Tokenizer


def test_streamed_text_equals_full_decode_for_multibyte_text(bundled_folder):
    tok = Tokenizer(bundled_folder)
    text = " naïve café — 世界 👋🏽 fin"
    ids = tok.encode(text)
    detok = IncrementalDetokenizer(tok, [])
    deltas = [detok.add(t) for t in ids]
    assert all("\ufffd" not in d for d in deltas)
    assert "".join(deltas) == tok.decode(ids)
    assert sum(1 for d in deltas if d == "") >= 1  # some byte tokens had to wait for the rest


def test_first_token_keeps_its_leading_space(bundled_folder):
    tok = Tokenizer(bundled_folder)
    prompt = tok.encode("Hello")
    ids = tok.encode("Hello world")[len(prompt):]
    detok = IncrementalDetokenizer(tok, prompt)
    assert "".join(detok.add(t) for t in ids) == " world"
