"""Per-layer power-of-two scales for an fp8 (e4m3) KV cache, folded into the model.

e4m3 keeps 3 mantissa bits and has no normal numbers below 2**-6: on SmolLM2, 42% of layer 0's V
values fall there and lose most of their precision, while another layer's K reaches 18. So each
layer's K and V are multiplied, before the cast, by a power of two f that brings the largest value
seen on a calibration text to between TARGET / 2 and TARGET (well under e4m3's 448, leaving room
for prompts that reach further; the store clamps beyond it):

- K: the k rows of the qkv projection (or, with q/k norms, the k norm's weight) are multiplied by
  f_k and the attention's softmax scale divided by it, so every score is unchanged.
- V: the v rows are multiplied by f_v and the attention output by 1 / f_v.

Powers of two are exact in floating point: with a bf16 cache the model computes the same numbers
as before (a test checks it bit for bit). Packed weights scale exactly too, through their fp16
block scales. The scales are fixed before any KV is written and before graphs are captured.
"""
from __future__ import annotations

import logging
import math

import torch

from engine.model.attention import AttentionMetadata
from engine.model.linear import ProjLinear

log = logging.getLogger(__name__)

TARGET = 112.0  # the largest calibration value lands in (TARGET / 2, TARGET]
MIN_LOG2, MAX_LOG2 = -4, 8
CALIBRATION = [
    {"role": "system", "content": "You are a helpful assistant. Answer from the documents when you can."},
    {"role": "user", "content": "Summarise the passage below in two sentences, then list its three main points.\n\n"
     "The harbour was built in 1847 to serve the coal trade. By 1900 it handled more than two million "
     "tonnes a year, and its breakwater, 1.2 km long, sheltered forty ships at once. After the mines "
     "closed in 1968 the docks fell silent; today the old warehouses hold a museum, a market and flats, "
     "and ferries leave twice a day for the islands. What is the capital of France? 12 x 12 = 144."},
]


def calibration_ids(tokenizer) -> list[int]:
    """The calibration conversation in the model's template (a system prompt first, as chats
    have: its first tokens are where attention sinks, and K/V, are largest)."""
    from engine.errors import RequestError
    try:
        return tokenizer.apply_chat_template(CALIBRATION)
    except RequestError:  # no chat template
        return tokenizer.encode("\n\n".join(m["content"] for m in CALIBRATION))


def factor(amax: float) -> float:
    """The power of two that brings `amax` into (TARGET / 2, TARGET]."""
    if amax <= 0 or not math.isfinite(amax):
        return 1.0
    return 2.0 ** max(MIN_LOG2, min(MAX_LOG2, math.floor(math.log2(TARGET / amax))))


@torch.inference_mode()
def measure(model, ids: list[int], block_size: int, dtype: torch.dtype) -> list[tuple[float, float]]:
    """(max |K|, max |V|) per layer, as stored (after RoPE), over `ids` run as one prefill into a
    temporary cache in the compute dtype."""
    device = model.norm.weight.device
    cfg = model.cfg
    blocks = -(-len(ids) // block_size)
    cache = torch.zeros(2, cfg.num_layers, blocks, block_size, cfg.num_kv_heads, cfg.head_dim, dtype=dtype,
                        device=device)
    saved = [(layer.self_attn.k_cache, layer.self_attn.v_cache) for layer in model.layers]
    model.bind_kv_cache(list(cache[0]), list(cache[1]))
    n = len(ids)
    positions = torch.arange(n, device=device)
    table = torch.arange(blocks, dtype=torch.int32, device=device)[None, :]
    meta = AttentionMetadata(
        positions=positions, slot_mapping=positions, num_decode=0, decode_block_tables=table[:0],
        decode_context_lens=positions[:0], prefill_cu_seqlens=[0, n], prefill_context_lens=[n],
        prefill_block_tables=table, prefill_cu_seqlens_t=torch.tensor([0, n], device=device),
        prefill_context_lens_t=torch.tensor([n], device=device), max_prefill_len=n)
    host_ids = torch.tensor(ids, device=device)
    try:
        model(host_ids, torch.full_like(host_ids, -1), torch.zeros(1, dtype=torch.int32, device=device), meta)
        amax = cache.abs().flatten(2).amax(dim=2).float().cpu()  # [2, layers]
    finally:
        for layer, (k, v) in zip(model.layers, saved):
            layer.self_attn.k_cache, layer.self_attn.v_cache = k, v
    return [(float(amax[0, i]), float(amax[1, i])) for i in range(cfg.num_layers)]


@torch.inference_mode()
def fold(model, amax: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Scale each layer's stored K and V as the module docstring says; returns (f_k, f_v)."""
    factors = []
    for layer, (k_max, v_max) in zip(model.layers, amax):
        attn = layer.self_attn
        f_k, f_v = factor(k_max), factor(v_max)
        q, kv = attn.q_size, attn.kv_size
        if attn.qk_norm:
            attn.k_norm.weight.mul_(f_k)
        else:
            scale_rows(attn.qkv_proj, q, q + kv, f_k)
        scale_rows(attn.qkv_proj, q + kv, q + 2 * kv, f_v)
        attn.kv_factors = (f_k, f_v)
        attn._weights = None  # rebuilt with the new softmax and output scales
        factors.append((f_k, f_v))
    log.info("fp8 KV cache: per-layer K and V scales %s", factors)
    return factors


def scale_rows(proj: ProjLinear, start: int, end: int, f: float) -> None:
    """Multiply output rows [start, end) of a projection by a power of two, bias included."""
    if proj.bias is not None:
        proj.bias[start:end].mul_(f)
    if proj.int4 is not None:  # the CPU's int4 copy: w = (q - 8) * s + z scales with s and z
        proj.int4.scales_zeros[:, start:end].mul_(f)
    if not proj.segments:
        proj.weight[start:end].mul_(f)
        return
    for seg in proj.segments:
        lo, hi = max(start, seg.start) - seg.start, min(end, seg.start + seg.weight.shape[0]) - seg.start
        if lo < hi:
            seg.weight.d[lo:hi].mul_(f)  # every packed type's weight is linear in d and in m
            if seg.weight.m is not None:
                seg.weight.m[lo:hi].mul_(f)
