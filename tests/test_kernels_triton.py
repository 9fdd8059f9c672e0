"""Triton attention and cache kernels against their torch references, on random inputs built to
expose stray reads and writes (tests/triton_helpers.py). The reference runs on the same values
widened to fp32 (with the NaN slots it never uses zeroed).

CPU cases run in Triton's interpreter at tiny sizes, in a child pytest (`run_interpreted`); CUDA
cases run compiled, at real sizes, where a GPU is present.
"""
from dataclasses import dataclass

import pytest
import torch

pytest.importorskip("triton")

from triton_helpers import (  # noqa: E402
    CUDA, DEVICES, DTYPE_IDS, DTYPES, GARBAGE_BLOCK, INTERPRET, check_close, fix_interpreter, paged_kv, queries, rngs,
    run_interpreted)

import kernels  # noqa: E402
from kernels.decode_attention import (  # noqa: E402
    decode_attention_ref, decode_attention_triton, decode_workspace, paged_decode_attention_ref)
from kernels.prefill_attention import paged_prefill_attention_ref, paged_prefill_attention_triton  # noqa: E402
from kernels.rope import rope_store_kv_ref, rope_store_kv_triton, split_rotate_ref, store_ref  # noqa: E402


@dataclass(frozen=True)
class Sizes:
    heads: dict[int, tuple[int, int]]  # GQA ratio -> (query heads, KV heads)
    decode_lens: list[int]
    prefill_new: list[int]  # new tokens per sequence
    prefill_prefix: list[int]  # cached tokens before them


SIZES = {  # the interpreter's time grows with the number of programs: few heads on the CPU
    "cpu": Sizes({1: (2, 2), 4: (8, 2), 8: (8, 1)}, [1, 100, 33], [5, 1, 40, 17], [0, 29, 31, 32]),
    "cuda": Sizes({1: (32, 32), 4: (32, 8), 8: (32, 4)},
                  [1, 4096, 2049, 15, 1000, 3333, 64, 4095, 257, 2048, 512, 777],
                  [1, 1024, 300, 129, 64, 700], [4000, 0, 3000, 1, 2048, 1234]),
}

if INTERPRET:
    fix_interpreter()


@pytest.mark.skipif(INTERPRET, reason="this is the interpreted child")
def test_interpreted_cpu_cases():
    run = run_interpreted(__file__)
    assert run.returncode == 0 and run.passed > 0, run.output


def rope_tables(max_positions: int, head_dim: int, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """fp32 cos/sin tables [max_positions, head_dim], laid out as the model's RotaryEmbedding."""
    inv_freq = 1.0 / (10000.0 ** (torch.arange(0, head_dim, 2).float() / head_dim))
    freqs = torch.arange(max_positions).float()[:, None] * inv_freq[None, :]
    emb = torch.cat([freqs, freqs], dim=-1)
    return emb.cos().to(device), emb.sin().to(device)


def new_token_slots(lens: list[int], tables: torch.Tensor, block_size: int) -> torch.Tensor:
    """The slot of each sequence's last position (-1 where the context is empty)."""
    slots = [int(tables[i, (n - 1) // block_size]) * block_size + (n - 1) % block_size if n else -1
             for i, n in enumerate(lens)]
    return torch.tensor(slots, device=tables.device)


def qk_norms(with_norm: bool, head_dim: int, dtype: torch.dtype, device: str, gen: torch.Generator):
    if not with_norm:
        return None, None
    return tuple((1 + 0.3 * torch.randn(head_dim, generator=gen, device=device)).to(dtype) for _ in "qk")


@pytest.mark.parametrize("qk_norm", [False, True], ids=["rope", "qknorm"])
@pytest.mark.parametrize("num_splits", [1, 3])
@pytest.mark.parametrize("ratio", [1, 4, 8])
@pytest.mark.parametrize("block_size", [16, 32])
@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("device", DEVICES)
def test_decode_matches_reference(device, dtype, head_dim, block_size, ratio, num_splits, qk_norm):
    """Rotate, store and attend in one kernel, against rope_store_kv_ref + the attention reference."""
    if qk_norm and (ratio != 4 or block_size != 16):
        pytest.skip("the norm is independent of the layout: one layout suffices")
    sizes, (layout, values) = SIZES[device], rngs(head_dim + block_size + ratio, device)
    lens = sizes.decode_lens
    num_q_heads, num_kv_heads = sizes.heads[ratio]
    kv = paged_kv(lens, block_size, num_kv_heads, head_dim, dtype, device, layout, values)
    qkv = torch.randn(len(lens), (num_q_heads + 2 * num_kv_heads) * head_dim, generator=values,
                      device=device).to(dtype)
    qkv_before = qkv.clone()
    q_norm, k_norm = qk_norms(qk_norm, head_dim, dtype, device, values)
    cos, sin = rope_tables(max(lens) + 1, head_dim, device)
    context_lens = torch.tensor(lens, dtype=torch.int32, device=device)
    positions = (context_lens - 1).long()
    slots = new_token_slots(lens, kv.ref_tables, block_size)
    out = torch.full((len(lens), num_q_heads, head_dim), float("nan"), dtype=dtype, device=device)
    # A workspace larger than needed, as a CUDA graph would reuse one sized for its largest batch.
    workspace = decode_workspace(len(lens) + 2, num_q_heads, num_kv_heads, head_dim, num_splits, device)
    workspace.partials.fill_(float("nan"))
    # The tables as the persistent batch holds them: rows of a larger table, in another order.
    rows = torch.randperm(len(lens) + 3, generator=layout)[:len(lens)].to(device)
    persistent = torch.full((len(lens) + 3, kv.tables.shape[1]), GARBAGE_BLOCK, dtype=torch.int32, device=device)
    persistent[rows] = kv.tables
    result = decode_attention_triton(qkv, positions, cos, sin, kv.k_cache, kv.v_cache, slots, persistent,
                                     context_lens, head_dim ** -0.5, num_q_heads, num_kv_heads, q_norm, k_norm,
                                     out=out, workspace=workspace, num_splits=num_splits, table_rows=rows)
    assert result is out
    assert torch.equal(qkv, qkv_before)
    ref = decode_attention_ref(qkv.float(), positions, cos, sin, kv.ref_k_cache, kv.ref_v_cache, slots,
                               kv.ref_tables, context_lens, head_dim ** -0.5, num_q_heads, num_kv_heads,
                               None if q_norm is None else q_norm.float(), None if k_norm is None else k_norm.float())
    check_close(out, ref)
    assert not workspace.counters.any()  # left at zero for the next call (a CUDA graph replays it)
    flat = slots.long()
    for cache, ref_cache in ((kv.k_cache, kv.ref_k_cache), (kv.v_cache, kv.ref_v_cache)):
        check_close(cache.view(-1, num_kv_heads, head_dim)[flat], ref_cache.view(-1, num_kv_heads, head_dim)[flat])


@pytest.mark.parametrize("num_splits", [1, 3])
@pytest.mark.parametrize("device", DEVICES)
def test_decode_gives_zeros_for_empty_contexts(device, num_splits):
    """CUDA-graph padding rows have context 0 and slot -1: zeros out, nothing stored."""
    layout, values = rngs(0, device)
    lens = [0, 70, 0]
    kv = paged_kv(lens, 16, 2, 64, torch.float32, device, layout, values)
    k_before = kv.k_cache.clone()
    qkv = torch.randn(3, 12 * 64, generator=values, device=device)
    cos, sin = rope_tables(80, 64, device)
    context_lens = torch.tensor(lens, dtype=torch.int32, device=device)
    positions = torch.tensor([0, 69, 0], device=device)
    slots = new_token_slots(lens, kv.ref_tables, 16)
    out = decode_attention_triton(qkv, positions, cos, sin, kv.k_cache, kv.v_cache, slots, kv.tables,
                                  context_lens, 0.125, 8, 2, num_splits=num_splits)
    assert not out[[0, 2]].any()
    ref = decode_attention_ref(qkv[1:2], positions[1:2], cos, sin, kv.ref_k_cache, kv.ref_v_cache, slots[1:2],
                               kv.ref_tables[1:2], context_lens[1:2], 0.125, 8, 2)
    check_close(out[1:2], ref)
    changed = (kv.k_cache != k_before) & ~(kv.k_cache.isnan() & k_before.isnan())
    assert changed.view(-1, 2 * 64).any(1).nonzero().view(-1).tolist() == [int(slots[1])]


def test_decode_reference_reads_views_and_gathers_alike():
    """The CPU path reads long contexts in contiguous runs through views, short ones gathered: same result."""
    gen = torch.Generator().manual_seed(3)
    bs, hkv, d = 16, 2, 32
    k_cache, v_cache = (torch.randn(64, bs, hkv, d, generator=gen) for _ in "kv")
    lens = [300, 40, 340, 260]
    tables = [list(range(0, 19)), [40, 41, 42], list(range(20, 30)) + list(range(44, 56)), [63, 5, 33, 7] + [0] * 13]
    width = max(map(len, tables))
    table_t = torch.tensor([t + [0] * (width - len(t)) for t in tables], dtype=torch.int32)
    q = torch.randn(4, 8, d, generator=gen)
    out = paged_decode_attention_ref(q, k_cache, v_cache, table_t, torch.tensor(lens), 0.2)
    for i, n in enumerate(lens):
        k = torch.cat([k_cache[b] for b in tables[i]])[:n].repeat_interleave(4, 1)
        v = torch.cat([v_cache[b] for b in tables[i]])[:n].repeat_interleave(4, 1)
        probs = torch.softmax(torch.einsum("hd,nhd->hn", q[i], k) * 0.2, dim=-1)
        torch.testing.assert_close(out[i], torch.einsum("hn,nhd->hd", probs, v), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("split", [False, True], ids=["whole", "split"])
@pytest.mark.parametrize("ratio", [1, 4, 8])
@pytest.mark.parametrize("block_size", [16, 32])
@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("device", DEVICES)
def test_prefill_matches_reference(device, dtype, head_dim, block_size, ratio, split):
    """Split: the keys of each query tile spread over programs (as for a short chunk over a long
    prefix) and combined by the last; some parts then hold no key a row may see."""
    sizes, (layout, values) = SIZES[device], rngs(head_dim + block_size + ratio, device)
    new, lens = sizes.prefill_new, [p + n for p, n in zip(sizes.prefill_prefix, sizes.prefill_new)]
    num_q_heads, num_kv_heads = sizes.heads[ratio]
    kv = paged_kv(lens, block_size, num_kv_heads, head_dim, dtype, device, layout, values)
    q = queries(sum(new), num_q_heads, num_kv_heads, head_dim, dtype, device, values)
    cu_seqlens = torch.tensor([0] + new, device=device).cumsum(0).to(torch.int32)
    context_lens = torch.tensor(lens, dtype=torch.int32, device=device)
    out = torch.full_like(q, float("nan"), memory_format=torch.contiguous_format)
    paged_prefill_attention_triton(q, kv.k_cache, kv.v_cache, cu_seqlens, context_lens, kv.tables, head_dim ** -0.5,
                                   out=out, max_seqlen_q=max(new), max_context=max(lens) if split else None)
    check_close(out, paged_prefill_attention_ref(q.float(), kv.ref_k_cache, kv.ref_v_cache, cu_seqlens, context_lens,
                                           kv.ref_tables, head_dim ** -0.5))


@pytest.mark.parametrize("device", DEVICES)
def test_prefill_finds_its_own_grid_and_skips_empty_chunks(device):
    """Without `max_seqlen_q` the grid comes from cu_seqlens; a sequence with no new tokens writes nothing."""
    layout, values = rngs(1, device)
    new, lens = [3, 0, 70], [3, 20, 100]
    kv = paged_kv(lens, 16, 2, 64, torch.float16, device, layout, values)
    q = queries(sum(new), 8, 2, 64, torch.float16, device, values)
    cu_seqlens = torch.tensor([0, 3, 3, 73], dtype=torch.int32, device=device)
    context_lens = torch.tensor(lens, dtype=torch.int32, device=device)
    out = paged_prefill_attention_triton(q, kv.k_cache, kv.v_cache, cu_seqlens, context_lens, kv.tables, 0.125)
    check_close(out, paged_prefill_attention_ref(q.float(), kv.ref_k_cache, kv.ref_v_cache, cu_seqlens, context_lens,
                                           kv.ref_tables, 0.125))


@pytest.mark.parametrize("qk_norm", [False, True], ids=["rope", "qknorm"])
@pytest.mark.parametrize("block_size", [16, 32])
@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("device", DEVICES)
def test_rope_store_matches_reference(device, dtype, head_dim, block_size, qk_norm):
    """q rotated in place, k rotated and v stored at their slots, padding (-1) skipped, nothing else touched."""
    layout, values = rngs(head_dim + block_size, device)
    num_blocks, num_q_heads, num_kv_heads = (8, 4, 2) if device == "cpu" else (4096, 32, 8)
    num_tokens = 2 * num_blocks
    slots = torch.randperm(num_blocks * block_size, generator=layout)[:num_tokens]
    slots[torch.randperm(num_tokens, generator=layout)[:num_tokens // 4]] = -1
    positions = torch.randint(0, 4 * num_tokens, (num_tokens,), generator=layout)
    cos, sin = rope_tables(4 * num_tokens, head_dim, device)
    q_norm, k_norm = qk_norms(qk_norm, head_dim, dtype, device, values)
    qkv = torch.randn(num_tokens, (num_q_heads + 2 * num_kv_heads) * head_dim, generator=values,
                      device=device).to(dtype)
    qkv_ref = qkv.clone()
    cache = torch.full((num_blocks, block_size, num_kv_heads, head_dim), float("nan"), dtype=dtype, device=device)
    k_cache, v_cache, k_ref, v_ref = (cache.clone() for _ in range(4))
    args = (positions.to(device), cos, sin)
    q = rope_store_kv_triton(qkv, *args, k_cache, v_cache, slots.to(device), num_q_heads, num_kv_heads, q_norm, k_norm)
    q_ref = rope_store_kv_ref(qkv_ref, *args, k_ref, v_ref, slots.to(device), num_q_heads, num_kv_heads, q_norm,
                              k_norm)
    # Within a unit in the last place of the largest value: the GPU may fuse a product into the
    # sum (one rounding fewer), which near a cancellation is a large relative but tiny absolute error.
    eps = torch.finfo(dtype).eps
    ulp = dict(rtol=2 * eps, atol=2 * eps * float(q_ref.abs().max()), equal_nan=True)
    torch.testing.assert_close(q, q_ref, **ulp)
    torch.testing.assert_close(qkv, qkv_ref, **ulp)  # k and v columns untouched, q rotated in place
    torch.testing.assert_close(k_cache, k_ref, **ulp)
    torch.testing.assert_close(v_cache, v_ref, rtol=0, atol=0, equal_nan=True)


@pytest.mark.skipif(INTERPRET or not CUDA, reason="needs a GPU")
def test_public_ops_run_triton_on_cuda():
    """On CUDA tensors the public names are the Triton kernels: same bits as calling them directly."""
    layout, values = rngs(2, "cuda")
    lens = [100, 3000]
    kv = paged_kv(lens, 16, 8, 128, torch.float16, "cuda", layout, values)
    q = queries(2, 32, 8, 128, torch.float16, "cuda", values)
    context_lens = torch.tensor(lens, dtype=torch.int32, device="cuda")
    cu_seqlens = torch.tensor([0, 1, 2], dtype=torch.int32, device="cuda")
    args = (q, kv.k_cache, kv.v_cache, cu_seqlens, context_lens, kv.tables, 0.1)
    assert torch.equal(kernels.paged_prefill_attention(*args), paged_prefill_attention_triton(*args))
    qkv = torch.randn(2, 48 * 128, device="cuda", dtype=torch.float16)
    cos, sin = rope_tables(3000, 128, "cuda")
    slots = new_token_slots(lens, kv.ref_tables, 16)
    args = (qkv, context_lens.long() - 1, cos, sin, kv.k_cache, kv.v_cache, slots, kv.tables, context_lens, 0.1, 32, 8)
    assert torch.equal(kernels.decode_attention(*args), decode_attention_triton(*args))


@pytest.mark.parametrize("device", DEVICES)
def test_fp8_caches_are_read_and_written_as_the_reference_does(device):
    """An fp8 (e4m3) KV cache: decode stores the new token rounded and saturated, both attention
    kernels read it back widened; the reference on the same fp8 cache agrees."""
    layout, values = rngs(11, device)
    lens, new = [70, 130], [5, 40]
    kv = paged_kv(lens, 16, 2, 64, torch.float32, device, layout, values)
    k8 = kv.ref_k_cache.mul(2).to(torch.float8_e4m3fn)
    v8 = kv.ref_v_cache.to(torch.float8_e4m3fn)
    k_ref, v_ref = k8.clone(), v8.clone()
    qkv = torch.randn(2, 12 * 64, generator=values, device=device).to(torch.bfloat16)
    cos, sin = rope_tables(200, 64, device)
    context_lens = torch.tensor(lens, dtype=torch.int32, device=device)
    positions = (context_lens - 1).long()
    slots = new_token_slots(lens, kv.ref_tables, 16)
    out = decode_attention_triton(qkv, positions, cos, sin, k8, v8, slots, kv.tables, context_lens, 0.125, 8, 2)
    decode_attention_ref(qkv, positions, cos, sin, k_ref, v_ref, slots, kv.ref_tables, context_lens, 0.125, 8, 2)
    k_codes, k_ref_codes = k8.view(torch.uint8).int(), k_ref.view(torch.uint8).int()
    if device == "cpu":
        assert torch.equal(k_codes, k_ref_codes)  # the same stored bits
    else:  # the GPU may fuse the rotation's products into its sums: then, rarely, the neighbouring code
        steps = (k_codes - k_ref_codes).abs()
        assert steps.max() <= 1 and (steps > 0).float().mean() < 0.01
    assert torch.equal(v8.view(torch.uint8), v_ref.view(torch.uint8))
    q_rot = split_rotate_ref(qkv.float(), positions, cos, sin, 8, 2)[0]
    check_close(out, paged_decode_attention_ref(q_rot, k8.float(), v8.float(), kv.ref_tables, context_lens, 0.125))
    q = queries(sum(new), 8, 2, 64, torch.bfloat16, device, values)
    cu = torch.tensor([0] + new, device=device).cumsum(0).to(torch.int32)
    got = paged_prefill_attention_triton(q, k8, v8, cu, context_lens, kv.tables, 0.125, max_seqlen_q=max(new))
    check_close(got, paged_prefill_attention_ref(q.float(), k8, v8, cu, context_lens, kv.ref_tables, 0.125))
    # values past e4m3's range saturate instead of turning into NaN
    cache = torch.zeros(1, 2, 1, 4, dtype=torch.float8_e4m3fn, device=device)
    store_ref(torch.tensor([[[1000.0, -1e6, 3.0, 0.1]]], device=device), torch.zeros(1, 1, 4, device=device),
              cache[:, :, :, :], cache.clone(), torch.tensor([1], device=device))
    assert cache[0, 1, 0].float().tolist() == [448.0, -448.0, 3.0, pytest.approx(0.1, rel=0.07)]
