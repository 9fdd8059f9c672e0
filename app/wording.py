"""Words shared by the terminal and the window: counts with the right plural, and the line under
each answer."""
from __future__ import annotations


def plural(n: int, noun: str, many: str | None = None) -> str:
    """"1 token", "2 tokens", "0 passages"; `many` for nouns whose plural is not noun + "s"."""
    return f"{n} {noun if n == 1 else (many or noun + 's')}"


def answer_summary(ttft_s: float | None, tokens_per_s: float | None, generated_tokens: int,
                   cached_tokens: int, prompt_tokens: int, finish_reason: str | None,
                   ram_tokens: int = 0, disk_tokens: int = 0) -> str:
    """"TTFT 0.42 s · 31.0 tok/s · 12 tokens · cached 96/120 prompt tokens · 64 from RAM"; the
    cached tokens not from RAM or disk were on the device already."""
    parts = [f"TTFT {ttft_s:.2f} s" if ttft_s is not None else "TTFT -",
             f"{tokens_per_s:.1f} tok/s" if tokens_per_s is not None else "- tok/s",
             plural(generated_tokens, "token"),
             f"cached {cached_tokens}/{plural(prompt_tokens, 'prompt token')}"]
    tiers = [f"{n} from {where}" for n, where in ((ram_tokens, "RAM"), (disk_tokens, "disk")) if n]
    if tiers:
        parts.append(", ".join(tiers))
    if finish_reason == "length":
        parts.append("cut at the length limit")
    return " · ".join(parts)


# ---------------------------------------------------------------------------------- memory

DENSE_FORMATS = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16", "float64": "fp64",
                 "float8_e4m3fn": "fp8", "float8_e5m2": "fp8 (e5m2)"}


def size_text(n: int) -> str:
    """"612 MiB", "1.4 GiB", "36 KiB", "512 bytes": binary units, as memory is counted."""
    if n < 1024:
        return plural(int(n), "byte")
    value, units = n / 1024, ["KiB", "MiB", "GiB", "TiB"]
    while value >= 1024 and len(units) > 1:
        value, units = value / 1024, units[1:]
    return f"{value:.1f} {units[0]}" if value < 10 else f"{value:.0f} {units[0]}"


def format_name(name: str) -> str:
    """A storage format as a user reads it: "bf16" for torch's "bfloat16"; GGUF types as they are."""
    return DENSE_FORMATS.get(name, name)


def is_packed(name: str) -> bool:
    """Whether a weight format is a quantized (packed) one, like "Q4_K", rather than a float dtype."""
    return name not in DENSE_FORMATS


def weights_summary(info: dict) -> str:
    """"Q4_K 612 MiB · Q6_K 160 MiB (packed) · fp32 1.2 MiB · 773 MiB in all": the weights by
    storage format, quantized ones first, largest first, from a backend's `model_info()`."""
    formats = sorted(info.get("weight_formats", {}).items(), key=lambda kv: (not is_packed(kv[0]), -kv[1]))
    if not formats:
        return "unknown"
    packed = [f"{format_name(name)} {size_text(n)}" for name, n in formats if is_packed(name)]
    dense = [f"{format_name(name)} {size_text(n)}" for name, n in formats if not is_packed(name)]
    parts = []
    if packed:
        quantized_at_load = info.get("quantization")
        parts.append(" · ".join(packed) + (f" ({quantized_at_load}, quantized at load)" if quantized_at_load
                                           else " (packed)"))
    parts += dense
    if info.get("int4_decode_bytes"):
        parts.append(f"a 4-bit copy for decoding {size_text(info['int4_decode_bytes'])}")
    if len(formats) > 1 or info.get("int4_decode_bytes"):
        parts.append(f"{size_text(info.get('weight_bytes') or sum(n for _, n in formats))} in all")
    text = " · ".join(parts)
    if not packed and info.get("dequantized") and str(info.get("model", "")).lower().endswith(".gguf"):
        text += " (the file's quantized weights, expanded at load for speed)"
    return text


def kv_summary(info: dict) -> str:
    """"bf16, 36 KiB/token · 2.0 GiB · 58,240 tokens of context"."""
    if "kv_dtype" not in info:
        return "unknown"
    parts = [f"{format_name(info['kv_dtype'])}, {size_text(info.get('kv_bytes_per_token', 0))}/token"]
    if info.get("kv_bytes"):
        parts.append(size_text(info["kv_bytes"]))
    parts.append(f"{int(info.get('context_tokens', 0)):,} tokens of context")
    return " · ".join(parts)


def memory_limit_summary(info: dict) -> str | None:
    """"8.0 GiB", "none" on a GPU; None on the CPU, where the limit does not apply."""
    if info.get("device") != "cuda":
        return None
    limit = info.get("gpu_memory_limit")
    return size_text(limit) if limit else "none (the free GPU memory)"


def memory_summary(info: dict) -> str:
    """The whole picture on one line, for the terminal: weights, KV cache, context, limit."""
    if not info:
        return ""
    line = f"{weights_summary(info)} · KV {kv_summary(info)}"
    limit = memory_limit_summary(info)
    return f"{line} · GPU memory limit {limit}" if limit is not None and info.get("gpu_memory_limit") else line
