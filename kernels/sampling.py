"""sample: one token per row from logits, on the device, with every sampling parameter per row.

Parameters live in per-row device arrays indexed by the sequence's persistent row (`SamplingState`),
so a decode step's sampling is part of its CUDA graph: nothing is built on the host per step.
Order and meaning follow transformers' logits processors: repetition penalty (over the tokens the
sequence has seen, a per-row mask), temperature, top-k, top-p, min-p; temperature 0 is greedy.

Randomness is a counter-based hash of (row seed, token position, vocabulary index): a seeded row
draws the same tokens whatever else is in the batch and whichever implementation runs it. A draw
is the exponential race argmax(p / E), E ~ Exp(1), computed as argmax(logit / T - log E).

The Triton version is two kernels. The first reads the vocabulary in parallel chunks and keeps each
chunk's best candidate: for greedy rows the largest (penalised) logit, for rows that only scale by
a temperature the largest logit / T - log E. The second, one program per row, combines those, or,
for rows with top-k, top-p or min-p, reads the row again and finds the cut-offs by bisection over
its scaled logits (no sort): `BISECT_STEPS` halvings of the row's range, about 1e-7 of it. The
reference sorts; the two keep the same tokens except where a cut-off falls within that resolution
of a logit.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from kernels._triton import cdiv, jit, next_pow2, tl

BLOCK_V = 2048
CHUNK = 4096  # vocabulary entries per program of the first kernel
BISECT_STEPS = 30
MASK32 = 0xFFFFFFFF
MIX_A, MIX_B, GOLDEN = 0x7FEB352D, 0x846CA68B, 0x9E3779B9


@dataclass
class SamplingState:
    """Per-row sampling parameters and history, on the device. Row r belongs to one running sequence."""

    temperature: torch.Tensor  # [R] float32, 0 = greedy
    top_k: torch.Tensor  # [R] int32, 0 = off
    top_p: torch.Tensor  # [R] float32
    min_p: torch.Tensor  # [R] float32
    penalty: torch.Tensor  # [R] float32, 1 = off
    seed: torch.Tensor  # [R] int64
    seen: torch.Tensor  # [R, V] uint8: tokens in the prompt or output (read only where penalty != 1)
    last_token: torch.Tensor  # [R] int32: the row's latest sampled token (the next step's input)

    @classmethod
    def allocate(cls, num_rows: int, vocab: int, device: torch.device) -> SamplingState:
        f32, i32 = dict(dtype=torch.float32, device=device), dict(dtype=torch.int32, device=device)
        return cls(torch.zeros(num_rows, **f32), torch.zeros(num_rows, **i32), torch.ones(num_rows, **f32),
                   torch.zeros(num_rows, **f32), torch.ones(num_rows, **f32),
                   torch.zeros(num_rows, dtype=torch.int64, device=device),
                   torch.zeros(num_rows, vocab, dtype=torch.uint8, device=device), torch.zeros(num_rows, **i32))


# ----------------------------------------------------------------------------- the random numbers

def _mix32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer finaliser on int64 tensors holding 32-bit values (wrapping products, masked)."""
    x = x ^ (x >> 16)
    x = (x * MIX_A) & MASK32
    x = x ^ (x >> 15)
    x = (x * MIX_B) & MASK32
    return x ^ (x >> 16)


def row_keys(seeds: torch.Tensor, counters: torch.Tensor) -> torch.Tensor:
    """One 32-bit key per (seed, position)."""
    seeds, counters = seeds.long(), counters.long()
    k = _mix32(counters & MASK32)
    k = _mix32(k ^ ((seeds >> 32) & MASK32))
    return _mix32(k ^ (seeds & MASK32))


def uniforms(keys: torch.Tensor, vocab: int) -> torch.Tensor:
    """[rows, vocab] float32 in (0, 1): the hash of each row key with each vocabulary index."""
    v = torch.arange(vocab, device=keys.device, dtype=torch.int64)
    bits = _mix32(keys[:, None] ^ ((v * GOLDEN) & MASK32)[None, :])
    return ((bits >> 8).float() + 0.5) * (1.0 / (1 << 24))


# ----------------------------------------------------------------------------- reference

def sample_ref(logits: torch.Tensor, seq_rows: torch.Tensor, counters: torch.Tensor, state: SamplingState,
               logit_rows: torch.Tensor | None = None) -> torch.Tensor:
    """logits: [L, V]; sample i reads logits row `logit_rows[i]` (default i) with the parameters of
    persistent row `seq_rows[i]`; `counters[i]` is the position of the token being drawn.
    Returns [N] int32 tokens, and records them in `state.last_token` and `state.seen`."""
    rows = seq_rows.long()
    x = (logits if logit_rows is None else logits.index_select(0, logit_rows.long())).float()
    penalty = state.penalty[rows]
    if bool((penalty != 1.0).any()):
        seen = state.seen[rows].bool()
        pen = penalty[:, None]
        x = torch.where(seen & (pen != 1.0), torch.where(x > 0, x / pen, x * pen), x)
    tokens = x.argmax(dim=-1)
    temperature = state.temperature[rows]
    drawn = (temperature > 0).nonzero().view(-1)
    if drawn.numel():
        scaled = x[drawn] / temperature[drawn, None]
        keep = _keep_ref(scaled, state.top_k[rows[drawn]], state.top_p[rows[drawn]], state.min_p[rows[drawn]])
        noise = -torch.log(-torch.log(uniforms(row_keys(state.seed[rows[drawn]], counters[drawn]), x.shape[1])))
        tokens[drawn] = torch.where(keep, scaled + noise, float("-inf")).argmax(dim=-1)
    tokens = tokens.to(torch.int32)
    state.last_token[rows] = tokens
    state.seen[rows, tokens.long()] = 1
    return tokens


def _keep_ref(scaled: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor, min_p: torch.Tensor) -> torch.Tensor:
    """Tokens that survive top-k, then top-p over what top-k kept, then min-p, per row, in one sort."""
    vocab = scaled.shape[1]
    sorted_x, order = scaled.sort(dim=-1, descending=True)
    rank = torch.arange(vocab, device=scaled.device)[None, :]
    k = torch.where(top_k > 0, top_k.long(), vocab)[:, None]
    probs = torch.softmax(sorted_x, dim=-1).masked_fill(rank >= k, 0.0)
    probs = probs / probs.sum(dim=-1, keepdim=True)
    mass_before = probs.cumsum(dim=-1) - probs
    drop = (rank >= k) | (mass_before >= top_p[:, None])
    floor = torch.where(min_p > 0, torch.log(min_p.clamp_min(1e-38)), float("-inf"))
    drop |= sorted_x < (sorted_x[:, :1] + floor[:, None])
    drop[:, 0] = False
    return torch.zeros_like(drop).scatter_(-1, order, ~drop)


# ----------------------------------------------------------------------------- Triton

def sample_triton(logits: torch.Tensor, seq_rows: torch.Tensor, counters: torch.Tensor, state: SamplingState,
                  logit_rows: torch.Tensor | None = None, out: torch.Tensor | None = None) -> torch.Tensor:
    """Same contract as the reference; one program per sample, no host sync (graph-safe)."""
    num = seq_rows.shape[0]
    vocab = logits.shape[1]
    assert logits.stride(1) == 1 and state.seen.stride(1) == 1
    out = torch.empty(num, dtype=torch.int32, device=logits.device) if out is None else out
    if num:
        block = min(BLOCK_V, next_pow2(vocab))  # small vocabularies (tests) need no 2048-wide tiles
        chunk = max(block, min(CHUNK, next_pow2(vocab)))
        chunks = cdiv(vocab, chunk)
        best = torch.empty(num, chunks, dtype=torch.float32, device=logits.device)
        best_idx = torch.empty(num, chunks, dtype=torch.int32, device=logits.device)
        lrows = seq_rows if logit_rows is None else logit_rows
        common = (state.temperature, state.top_k, state.top_p, state.min_p, state.penalty, state.seed, state.seen)
        _chunk_best_kernel[(num, chunks)](
            logits, lrows, seq_rows, counters, best, best_idx, *common, vocab, logits.stride(0), state.seen.stride(0),
            IDENTITY_ROWS=logit_rows is None, CHUNK=chunk, BLOCK_V=block, num_warps=4)
        _sample_kernel[(num,)](
            logits, lrows, seq_rows, counters, out, best, best_idx, *common, state.last_token, vocab, chunks,
            logits.stride(0), state.seen.stride(0), IDENTITY_ROWS=logit_rows is None, BLOCK_V=block,
            CHUNKS_PAD=next_pow2(chunks), STEPS=BISECT_STEPS, num_warps=8)
    return out


@jit
def _mix32_tl(x):
    """`_mix32` in native uint32 arithmetic (products wrap mod 2**32): the same bits."""
    x = x ^ (x >> 16)
    x = x * tl.full([], 0x7FEB352D, tl.uint32)
    x = x ^ (x >> 15)
    x = x * tl.full([], 0x846CA68B, tl.uint32)
    return x ^ (x >> 16)


@jit
def _scaled_chunk(logit_row, seen_row, offs, vocab, penalty, inv_t):
    """Penalised, temperature-scaled logits of one chunk; -inf past the vocabulary."""
    live = offs < vocab
    x = tl.load(logit_row + offs, mask=live, other=float("-inf")).to(tl.float32)
    penalised = (tl.zeros_like(offs).to(tl.float32) + penalty) != 1.0  # a block, as the interpreter needs
    seen = tl.load(seen_row + offs, mask=live & penalised, other=0)
    x = tl.where(seen != 0, tl.where(x > 0, x / penalty, x * penalty), x)
    return tl.where(live, x * inv_t, float("-inf"))


@jit
def _row_key(seed_ptr, counters_ptr, row, i):
    """The 32-bit key of a row's draw (see `row_keys`)."""
    seed = tl.load(seed_ptr + row)
    counter = tl.load(counters_ptr + i).to(tl.int64)
    key = _mix32_tl(counter.to(tl.uint32))
    key = _mix32_tl(key ^ (seed >> 32).to(tl.uint32))
    return _mix32_tl(key ^ seed.to(tl.uint32))


@jit
def _gumbel(key, offs):
    """-log E for E ~ Exp(1), from the hash of (key, vocabulary index)."""
    bits = _mix32_tl(key ^ (offs.to(tl.uint32) * tl.full([], 0x9E3779B9, tl.uint32)))
    u = ((bits >> 8).to(tl.float32) + 0.5) * (1.0 / 16777216.0)
    return -tl.log(-tl.log(u))


@jit
def _is_filtered(top_k, top_p, min_p, vocab):
    return ((top_k > 0) & (top_k < vocab)) | (top_p < 1.0) | (min_p > 0.0)


@jit
def _row_inputs(logits_ptr, logit_rows_ptr, seen_ptr, temperature_ptr, penalty_ptr, stride_logits, stride_seen,
                i, row, IDENTITY_ROWS: tl.constexpr):
    """What both sampling passes read for sample i of sequence row `row`: its logits row, its seen
    tokens, its penalty, whether it is greedy, and 1 / temperature (1 when greedy)."""
    lrow = i if IDENTITY_ROWS else tl.load(logit_rows_ptr + i)
    temperature = tl.load(temperature_ptr + row)
    greedy = temperature == 0.0
    inv_t = tl.where(greedy, 1.0, 1.0 / tl.where(greedy, 1.0, temperature))
    return (logits_ptr + lrow.to(tl.int64) * stride_logits, seen_ptr + row * stride_seen,
            tl.load(penalty_ptr + row), greedy, inv_t)


@jit(do_not_specialize=("vocab", "stride_logits", "stride_seen"))
def _chunk_best_kernel(logits_ptr, logit_rows_ptr, seq_rows_ptr, counters_ptr, best_ptr, best_idx_ptr,
                       temperature_ptr, top_k_ptr, top_p_ptr, min_p_ptr, penalty_ptr, seed_ptr, seen_ptr,
                       vocab, stride_logits, stride_seen,
                       IDENTITY_ROWS: tl.constexpr, CHUNK: tl.constexpr, BLOCK_V: tl.constexpr):
    """Per (sample, chunk): the chunk's best score and its first index, for greedy rows (the
    penalised logit) and rows that only scale (logit / T - log E). Filtered rows ignore it."""
    i = tl.program_id(0)
    chunk = tl.program_id(1)
    row = tl.load(seq_rows_ptr + i).to(tl.int64)
    logit_row, seen_row, penalty, greedy, inv_t = _row_inputs(
        logits_ptr, logit_rows_ptr, seen_ptr, temperature_ptr, penalty_ptr, stride_logits, stride_seen, i, row,
        IDENTITY_ROWS)
    noise = tl.where(greedy, 0.0, 1.0)
    key = _row_key(seed_ptr, counters_ptr, row, i)
    best = tl.full([BLOCK_V], float("-inf"), tl.float32)
    best_idx = tl.zeros([BLOCK_V], tl.int32)
    for start in range(chunk * CHUNK, chunk * CHUNK + CHUNK, BLOCK_V):
        offs = start + tl.arange(0, BLOCK_V)
        x = _scaled_chunk(logit_row, seen_row, offs, vocab, penalty, inv_t)
        score = tl.where(offs < vocab, x + noise * _gumbel(key, offs), float("-inf"))
        better = score > best
        best_idx = tl.where(better, offs, best_idx)
        best = tl.where(better, score, best)
    top = tl.max(best, 0)
    tl.store(best_ptr + i * tl.num_programs(1) + chunk, top)
    tl.store(best_idx_ptr + i * tl.num_programs(1) + chunk, tl.min(tl.where(best == top, best_idx, 2147483647), 0))


@jit
def _count_mass(logit_row, seen_row, vocab, penalty, inv_t, threshold, floor, m, BLOCK_V: tl.constexpr):
    """How many tokens score >= threshold, and their exp-mass, among those >= floor."""
    count = tl.zeros([BLOCK_V], tl.int32)
    mass = tl.zeros([BLOCK_V], tl.float32)
    for start in range(0, vocab, BLOCK_V):
        x = _scaled_chunk(logit_row, seen_row, start + tl.arange(0, BLOCK_V), vocab, penalty, inv_t)
        hit = (x >= threshold) & (x >= floor)
        count += hit.to(tl.int32)
        mass += tl.where(hit, tl.exp(x - m), 0.0)
    return tl.sum(count, 0), tl.sum(mass, 0)


@jit(do_not_specialize=("vocab", "chunks", "stride_logits", "stride_seen"))
def _sample_kernel(logits_ptr, logit_rows_ptr, seq_rows_ptr, counters_ptr, out_ptr, best_ptr, best_idx_ptr,
                   temperature_ptr, top_k_ptr, top_p_ptr, min_p_ptr, penalty_ptr, seed_ptr, seen_ptr,
                   last_token_ptr, vocab, chunks, stride_logits, stride_seen,
                   IDENTITY_ROWS: tl.constexpr, BLOCK_V: tl.constexpr, CHUNKS_PAD: tl.constexpr,
                   STEPS: tl.constexpr):
    i = tl.program_id(0)
    row = tl.load(seq_rows_ptr + i).to(tl.int64)
    filtered = (_is_filtered(tl.load(top_k_ptr + row), tl.load(top_p_ptr + row), tl.load(min_p_ptr + row), vocab)
                & (tl.load(temperature_ptr + row) != 0.0))
    offs_c = tl.arange(0, CHUNKS_PAD)
    cands = tl.load(best_ptr + i * chunks + offs_c, mask=offs_c < chunks, other=float("-inf"))
    cand_idx = tl.load(best_idx_ptr + i * chunks + offs_c, mask=offs_c < chunks, other=2147483647)
    top = tl.max(cands, 0)
    token = tl.min(tl.where(cands == top, cand_idx, 2147483647), 0)  # greedy and plain temperature rows
    if filtered:
        token = _filtered_draw(logits_ptr, logit_rows_ptr, seq_rows_ptr, counters_ptr, temperature_ptr, top_k_ptr,
                               top_p_ptr, min_p_ptr, penalty_ptr, seed_ptr, seen_ptr, vocab, stride_logits,
                               stride_seen, i, row, IDENTITY_ROWS, BLOCK_V, STEPS)
    tl.store(out_ptr + i, token)
    tl.store(last_token_ptr + row, token)
    tl.store(seen_ptr + row * stride_seen + token, tl.full([], 1, tl.uint8))


@jit
def _filtered_draw(logits_ptr, logit_rows_ptr, seq_rows_ptr, counters_ptr, temperature_ptr, top_k_ptr, top_p_ptr,
                   min_p_ptr, penalty_ptr, seed_ptr, seen_ptr, vocab, stride_logits, stride_seen, i, row,
                   IDENTITY_ROWS: tl.constexpr, BLOCK_V: tl.constexpr, STEPS: tl.constexpr):
    """A draw with top-k, top-p or min-p: the cut-offs by bisection, then the race among the kept."""
    logit_row, seen_row, penalty, greedy, inv_t = _row_inputs(
        logits_ptr, logit_rows_ptr, seen_ptr, temperature_ptr, penalty_ptr, stride_logits, stride_seen, i, row,
        IDENTITY_ROWS)
    offs0 = tl.arange(0, BLOCK_V)

    # pass 1: max (and the first index holding it), min
    best = tl.full([BLOCK_V], float("-inf"), tl.float32)
    best_idx = tl.zeros([BLOCK_V], tl.int32)
    low = tl.full([BLOCK_V], float("inf"), tl.float32)
    for start in range(0, vocab, BLOCK_V):
        offs = start + offs0
        x = _scaled_chunk(logit_row, seen_row, offs, vocab, penalty, inv_t)
        better = x > best
        best_idx = tl.where(better, offs, best_idx)
        best = tl.where(better, x, best)
        low = tl.minimum(low, tl.where(offs < vocab, x, float("inf")))
    m = tl.max(best, 0)
    token = tl.min(tl.where(best == m, best_idx, 2147483647), 0)

    if not greedy:
        top_k = tl.load(top_k_ptr + row)
        top_p = tl.load(top_p_ptr + row)
        min_p = tl.load(min_p_ptr + row)
        floor = tl.where(min_p > 0, m + tl.log(tl.maximum(min_p, 1e-38)), float("-inf"))
        lo_all = tl.min(low, 0)
        t_k = tl.full([], float("-inf"), tl.float32)
        if (top_k > 0) & (top_k < vocab):
            lo = lo_all
            hi = m
            for _ in range(STEPS):  # largest t keeping at least k tokens
                mid = (lo + hi) * 0.5
                count, _ = _count_mass(logit_row, seen_row, vocab, penalty, inv_t, mid, float("-inf"), m, BLOCK_V)
                if count >= top_k:
                    lo = mid
                else:
                    hi = mid
            t_k = lo
        t_p = tl.full([], float("-inf"), tl.float32)
        if top_p < 1.0:
            _, total = _count_mass(logit_row, seen_row, vocab, penalty, inv_t, t_k, float("-inf"), m, BLOCK_V)
            lo = tl.maximum(lo_all, t_k)
            hi = m
            for _ in range(STEPS):  # largest t whose tokens (within top-k) hold at least top_p of the mass
                mid = (lo + hi) * 0.5
                _, mass = _count_mass(logit_row, seen_row, vocab, penalty, inv_t, mid, t_k, m, BLOCK_V)
                if mass >= top_p * total:
                    lo = mid
                else:
                    hi = mid
            t_p = lo
        cut = tl.maximum(tl.maximum(t_k, t_p), floor)
        key = _row_key(seed_ptr, counters_ptr, row, i)
        best = tl.full([BLOCK_V], float("-inf"), tl.float32)
        best_idx = tl.zeros([BLOCK_V], tl.int32)
        for start in range(0, vocab, BLOCK_V):
            offs = start + offs0
            x = _scaled_chunk(logit_row, seen_row, offs, vocab, penalty, inv_t)
            score = tl.where((x >= cut) | (offs == token), x + _gumbel(key, offs), float("-inf"))
            score = tl.where(offs < vocab, score, float("-inf"))
            better = score > best
            best_idx = tl.where(better, offs, best_idx)
            best = tl.where(better, score, best)
        top = tl.max(best, 0)
        token = tl.min(tl.where(best == top, best_idx, 2147483647), 0)

    return token
