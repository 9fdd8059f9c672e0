"""Words shared by the terminal and the window: counts with the right plural, and the line under
each answer."""
from __future__ import annotations


def plural(n: int, noun: str, many: str | None = None) -> str:
    """"1 token", "2 tokens", "0 passages"; `many` for nouns whose plural is not noun + "s"."""
    return f"{n} {noun if n == 1 else (many or noun + 's')}"


def answer_summary(ttft_s: float | None, tokens_per_s: float | None, generated_tokens: int,
                   cached_tokens: int, prompt_tokens: int, finish_reason: str | None) -> str:
    """"TTFT 0.42 s · 31.0 tok/s · 12 tokens · cached 96/120 prompt tokens"."""
    parts = [f"TTFT {ttft_s:.2f} s" if ttft_s is not None else "TTFT -",
             f"{tokens_per_s:.1f} tok/s" if tokens_per_s is not None else "- tok/s",
             plural(generated_tokens, "token"),
             f"cached {cached_tokens}/{plural(prompt_tokens, 'prompt token')}"]
    if finish_reason == "length":
        parts.append("cut at the length limit")
    return " · ".join(parts)
