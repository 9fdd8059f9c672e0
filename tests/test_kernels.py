"""Kernel references against plain per-sequence attention on random inputs: ragged lengths,
shuffled block tables, GQA ratios 1/4/8, outputs poisoned before the run."""
import pytest
import torch
import torch.nn.functional as F

import kernels
from kernels.decode_attention import paged_decode_attention_ref


def make_cache(num_blocks, bs, hkv, d, gen):
    return torch.randn(num_blocks, bs, hkv, d, generator=gen), torch.randn(num_blocks, bs, hkv, d, generator=gen)


def shuffled_tables(lens, bs, num_blocks, gen):
    width = max(-(-n // bs) for n in lens) + 1
    perm = torch.randperm(num_blocks, generator=gen).tolist()
    tables = torch.full((len(lens), width), -1, dtype=torch.int32)
    for i, n in enumerate(lens):
        for j in range(-(-n // bs)):
            tables[i, j] = perm.pop()
    return tables


def naive(q, k, v, scale):
    """q [m, Hq, D] the last m positions; k, v [n, Hkv, D]."""
    g = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(g, 1), v.repeat_interleave(g, 1)
    m, n = q.shape[0], k.shape[0]
    mask = torch.ones(m, n, dtype=torch.bool).tril(n - m)
    o = F.scaled_dot_product_attention(q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1), attn_mask=mask, scale=scale)
    return o.transpose(0, 1)


def rows(cache, table, n):
    return torch.cat([cache[b] for b in table.tolist() if b >= 0])[:n]


# short contexts (per-head matmuls), and more sequences than a group with long ones (scores from
# the gathered rows through a block-diagonal query matrix), ragged within each group
LENS = {"short": [1, 17, 100, 33, 64], "long": [300, 5, 700, 260, 1, 999, 512, 40, 258, 800]}


@pytest.mark.parametrize("hq, hkv", [(4, 4), (8, 2), (16, 2)])
@pytest.mark.parametrize("bs", [16, 32])
@pytest.mark.parametrize("contexts", sorted(LENS))
def test_decode_attention_matches_naive(hq, hkv, bs, contexts):
    gen = torch.Generator().manual_seed(hq * bs)
    d, lens = 64, LENS[contexts]
    num_blocks = sum(-(-n // bs) for n in lens) + 8
    k_cache, v_cache = make_cache(num_blocks, bs, hkv, d, gen)
    tables = shuffled_tables(lens, bs, num_blocks, gen)
    q = torch.randn(len(lens), hq, d, generator=gen)
    out = paged_decode_attention_ref(q, k_cache, v_cache, tables, torch.tensor(lens, dtype=torch.int32), d ** -0.5)
    for i, n in enumerate(lens):
        ref = naive(q[i:i + 1], rows(k_cache, tables[i], n), rows(v_cache, tables[i], n), d ** -0.5)
        torch.testing.assert_close(out[i:i + 1], ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("hq, hkv", [(4, 4), (8, 2), (16, 2)])
def test_prefill_attention_over_cached_prefix_matches_naive(hq, hkv):
    gen = torch.Generator().manual_seed(hq)
    bs, d = 16, 64
    new, ctx = [5, 1, 40], [5, 30, 71]  # no prefix, a decode-like row, a chunk after a prefix
    k_cache, v_cache = make_cache(32, bs, hkv, d, gen)
    tables = shuffled_tables(ctx, bs, 32, gen)
    q = torch.randn(sum(new), hq, d, generator=gen)
    cu = torch.tensor([0, 5, 6, 46], dtype=torch.int32)
    out = kernels.paged_prefill_attention(q, k_cache, v_cache, cu, torch.tensor(ctx, dtype=torch.int32), tables, d ** -0.5)
    # the keywords the model passes for the Triton kernel are dropped for the reference (on the GPU
    # too, under kernels.reference_ops), not refused
    tuned = kernels.paged_prefill_attention(q, k_cache, v_cache, cu, torch.tensor(ctx, dtype=torch.int32), tables,
                                            d ** -0.5, max_seqlen_q=max(new), max_context=tables.shape[1] * bs)
    assert torch.equal(tuned, out)
    for i, n in enumerate(ctx):
        s, e = cu[i].item(), cu[i + 1].item()
        ref = naive(q[s:e], rows(k_cache, tables[i], n), rows(v_cache, tables[i], n), d ** -0.5)
        torch.testing.assert_close(out[s:e], ref, rtol=1e-5, atol=1e-5)


def test_rope_store_writes_slots_and_skips_padding():
    k_cache = torch.full((4, 16, 2, 8), float("nan"))
    v_cache = k_cache.clone()
    qkv = torch.randn(3, (2 + 2 + 2) * 8)
    identity = torch.ones(64, 8), torch.zeros(64, 8)  # cos 1, sin 0: k is stored as it is
    kernels.rope_store_kv(qkv, torch.zeros(3, dtype=torch.long), *identity, k_cache, v_cache, torch.tensor([17, -1, 63]),
                          2, 2)
    k, v = qkv.view(3, 6, 8)[:, 2:4], qkv.view(3, 6, 8)[:, 4:]
    torch.testing.assert_close(k_cache[1, 1], k[0])
    torch.testing.assert_close(v_cache[3, 15], v[2])
    assert k_cache.isnan().sum() == k_cache.numel() - 2 * 16  # nothing else written, -1 skipped
