"""Triton kernels against their torch references, on random inputs built to expose stray reads and
writes: ragged contexts, shuffled block tables read through a strided view with -1 and garbage past
each sequence, NaN in every cache slot no sequence owns, in outputs and in workspaces before a run.
The reference runs on the same values widened to fp32 (with the NaN slots it never uses zeroed).

CPU cases run in Triton's interpreter at tiny sizes. Triton picks interpreter or compiler once, when
it is first imported, from TRITON_INTERPRET (its own `tl.sum`, `tl.max`, ... are decorated then).
A pytest process may have imported it already (test_kernels.py imports kernels, which imports
Triton), and its CUDA cases need the compiler. So `test_interpreted_cpu_cases` runs this file again
in a child pytest with TRITON_INTERPRET=1 in its environment from the start; the child runs the CPU
cases. CUDA cases run compiled, at real sizes, where a GPU is present.
"""
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
pytest.importorskip("triton")

import kernels  # noqa: E402
from kernels.decode_attention import (  # noqa: E402
    decode_workspace, paged_decode_attention_ref, paged_decode_attention_triton)
from kernels.prefill_attention import paged_prefill_attention_ref, paged_prefill_attention_triton  # noqa: E402
from kernels.store_kv import store_kv_ref, store_kv_triton  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CUDA = torch.cuda.is_available()
DEVICES = ["cpu"] if INTERPRET else [pytest.param("cuda", marks=pytest.mark.skipif(not CUDA, reason="no GPU"))]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
DTYPE_IDS = ["fp32", "fp16", "bf16"]
# Triton accumulates in fp32 but feeds P to the P @ V product in the input dtype, and rounds the output.
TOLERANCE = {torch.float32: 2e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}
GARBAGE_BLOCK = 1 << 30  # a block id far outside any cache: reading it would fault


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


def fix_interpreter() -> None:
    """Two gaps in Triton 3.6's interpreter that these kernels hit, patched in this process only.

    Loop bounds loaded from memory are 1-element arrays, which the interpreter turns into Python
    ints with `int(array)`; numpy >= 2.4 refuses that (triton-lang/triton#9171; the fix, #9172, is not in 3.6.0).
    bf16 values are stored as raw uint16 bits and `tl.dot` multiplies the bits (triton-lang/triton
    #11584, unsupported upstream); widening bf16 operands to fp32 first is exact and matches the
    GPU's bf16 dot, which multiplies exactly and accumulates in fp32.
    """
    import numpy as np
    import triton.language as tl
    from triton.runtime import interpreter

    patch_lang_tensor = interpreter._patch_lang_tensor
    create_dot = interpreter.InterpreterBuilder.create_dot

    def patch_index(tensor, scope):
        patch_lang_tensor(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.reshape(-1)[0]))

    def widen(handle):
        if handle.dtype.scalar != tl.bfloat16:
            return handle
        return interpreter.TensorHandle((handle.data.astype(np.uint32) << 16).view(np.float32), tl.float32)

    def dot(self, a, b, *args, **kwargs):
        return create_dot(self, widen(a), widen(b), *args, **kwargs)

    interpreter._patch_lang_tensor = patch_index
    interpreter.InterpreterBuilder.create_dot = dot


if INTERPRET:
    fix_interpreter()


@pytest.mark.skipif(INTERPRET, reason="this is the interpreted child")
def test_interpreted_cpu_cases():
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    proc = subprocess.run([sys.executable, "-m", "pytest", __file__, "-q", "-p", "no:cacheprovider"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    print(proc.stdout.strip().rsplit("\n", 1)[-1])
    assert proc.returncode == 0, proc.stdout[-10000:] + proc.stderr[-3000:]


@dataclass
class PagedKV:
    k_cache: torch.Tensor  # NaN in every slot no sequence owns
    v_cache: torch.Tensor
    tables: torch.Tensor  # strided view; -1 and GARBAGE_BLOCK past each sequence's blocks
    ref_k_cache: torch.Tensor  # fp32, NaN zeroed
    ref_v_cache: torch.Tensor
    ref_tables: torch.Tensor  # contiguous, -1 past each sequence's blocks


def rngs(seed: int, device: str) -> tuple[torch.Generator, torch.Generator]:
    """A CPU generator for layouts (block ids, slots) and one on `device` for the values."""
    return torch.Generator().manual_seed(seed), torch.Generator(device).manual_seed(seed)


def paged_kv(lens: list[int], block_size: int, num_kv_heads: int, head_dim: int, dtype: torch.dtype,
             device: str, layout: torch.Generator, values: torch.Generator) -> PagedKV:
    counts = [-(-n // block_size) for n in lens]
    num_blocks = sum(counts) + 3
    perm = torch.randperm(num_blocks, generator=layout).tolist()
    width = max(counts) + 2
    ref_tables = torch.full((len(lens), width), -1, dtype=torch.int32)
    owned = torch.zeros(num_blocks, block_size, dtype=torch.bool)
    for i, (n, count) in enumerate(zip(lens, counts)):
        blocks = torch.tensor([perm.pop() for _ in range(count)], dtype=torch.long)
        ref_tables[i, :count] = blocks.int()
        owned.view(-1)[(blocks[:, None] * block_size + torch.arange(block_size)).view(-1)[:n]] = True
    past = ref_tables < 0
    wide = torch.full((len(lens), 2 * width), GARBAGE_BLOCK, dtype=torch.int32)
    wide[:, ::2] = torch.where(past & (torch.arange(width) % 2 == 1), GARBAGE_BLOCK, ref_tables)
    unowned = ~owned.to(device)[:, :, None, None]
    shape = (num_blocks, block_size, num_kv_heads, head_dim)
    k, v = (torch.randn(shape, generator=values, device=device).masked_fill_(unowned, float("nan")).to(dtype)
            for _ in "kv")
    return PagedKV(k, v, wide.to(device)[:, ::2], k.float().nan_to_num(0), v.float().nan_to_num(0),
                   ref_tables.to(device))


def queries(num_tokens: int, num_q_heads: int, num_kv_heads: int, head_dim: int, dtype: torch.dtype,
            device: str, values: torch.Generator) -> torch.Tensor:
    """q as the engine gets it: the leading heads of a packed qkv projection, so not contiguous."""
    qkv = torch.randn(num_tokens, num_q_heads + 2 * num_kv_heads, head_dim, generator=values, device=device)
    return qkv.to(dtype)[:, :num_q_heads]


def check_close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    tol = TOLERANCE[actual.dtype]
    torch.testing.assert_close(actual.float(), expected, rtol=tol, atol=tol)


@pytest.mark.parametrize("num_splits", [1, 3])
@pytest.mark.parametrize("ratio", [1, 4, 8])
@pytest.mark.parametrize("block_size", [16, 32])
@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("device", DEVICES)
def test_decode_matches_reference(device, dtype, head_dim, block_size, ratio, num_splits):
    sizes, (layout, values) = SIZES[device], rngs(head_dim + block_size + ratio, device)
    lens = sizes.decode_lens
    num_q_heads, num_kv_heads = sizes.heads[ratio]
    kv = paged_kv(lens, block_size, num_kv_heads, head_dim, dtype, device, layout, values)
    q = queries(len(lens), num_q_heads, num_kv_heads, head_dim, dtype, device, values)
    context_lens = torch.tensor(lens, dtype=torch.int32, device=device)
    out = torch.full_like(q, float("nan"), memory_format=torch.contiguous_format)
    # A workspace larger than needed, as a CUDA graph would reuse one sized for its largest batch.
    workspace = decode_workspace(len(lens) + 2, num_q_heads, head_dim, num_splits, device).fill_(float("nan"))
    result = paged_decode_attention_triton(q, kv.k_cache, kv.v_cache, kv.tables, context_lens, head_dim ** -0.5,
                                           out=out, workspace=workspace, num_splits=num_splits)
    assert result is out
    check_close(out, paged_decode_attention_ref(q.float(), kv.ref_k_cache, kv.ref_v_cache, kv.ref_tables,
                                          context_lens, head_dim ** -0.5))


@pytest.mark.parametrize("num_splits", [1, 3])
@pytest.mark.parametrize("device", DEVICES)
def test_decode_gives_zeros_for_empty_contexts(device, num_splits):
    """CUDA-graph padding rows have context 0: they must come out as zeros, not NaN."""
    layout, values = rngs(0, device)
    lens = [0, 70, 0]
    kv = paged_kv(lens, 16, 2, 64, torch.float32, device, layout, values)
    q = queries(3, 8, 2, 64, torch.float32, device, values)
    context_lens = torch.tensor(lens, dtype=torch.int32, device=device)
    out = paged_decode_attention_triton(q, kv.k_cache, kv.v_cache, kv.tables, context_lens, 0.125,
                                        num_splits=num_splits)
    assert not out[[0, 2]].any()
    ref = paged_decode_attention_ref(q[1:2].float(), kv.ref_k_cache, kv.ref_v_cache, kv.ref_tables[1:2],
                                     context_lens[1:2], 0.125)
    check_close(out[1:2], ref)


@pytest.mark.parametrize("ratio", [1, 4, 8])
@pytest.mark.parametrize("block_size", [16, 32])
@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("device", DEVICES)
def test_prefill_matches_reference(device, dtype, head_dim, block_size, ratio):
    sizes, (layout, values) = SIZES[device], rngs(head_dim + block_size + ratio, device)
    new, lens = sizes.prefill_new, [p + n for p, n in zip(sizes.prefill_prefix, sizes.prefill_new)]
    num_q_heads, num_kv_heads = sizes.heads[ratio]
    kv = paged_kv(lens, block_size, num_kv_heads, head_dim, dtype, device, layout, values)
    q = queries(sum(new), num_q_heads, num_kv_heads, head_dim, dtype, device, values)
    cu_seqlens = torch.tensor([0] + new, device=device).cumsum(0).to(torch.int32)
    context_lens = torch.tensor(lens, dtype=torch.int32, device=device)
    out = torch.full_like(q, float("nan"), memory_format=torch.contiguous_format)
    paged_prefill_attention_triton(q, kv.k_cache, kv.v_cache, cu_seqlens, context_lens, kv.tables, head_dim ** -0.5,
                                   out=out, max_seqlen_q=max(new))
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


@pytest.mark.parametrize("block_size", [16, 32])
@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("device", DEVICES)
def test_store_kv_matches_reference(device, dtype, head_dim, block_size):
    layout, values = rngs(head_dim + block_size, device)
    num_blocks, num_kv_heads = (8, 2) if device == "cpu" else (4096, 8)
    num_tokens = 2 * num_blocks
    slots = torch.randperm(num_blocks * block_size, generator=layout)[:num_tokens]
    slots[torch.randperm(num_tokens, generator=layout)[:num_tokens // 4]] = -1
    kqv = torch.randn(num_tokens, 3 * num_kv_heads, head_dim, generator=values, device=device).to(dtype)
    k, v = kqv[:, :num_kv_heads], kqv[:, 2 * num_kv_heads:]  # strided, as split from a projection
    cache = torch.full((num_blocks, block_size, num_kv_heads, head_dim), float("nan"), dtype=dtype, device=device)
    k_cache, v_cache, k_ref, v_ref = (cache.clone() for _ in range(4))
    store_kv_triton(k, v, k_cache, v_cache, slots.to(device))
    store_kv_ref(k, v, k_ref, v_ref, slots.to(device))
    torch.testing.assert_close(k_cache, k_ref, rtol=0, atol=0, equal_nan=True)
    torch.testing.assert_close(v_cache, v_ref, rtol=0, atol=0, equal_nan=True)


@pytest.mark.skipif(INTERPRET or not CUDA, reason="needs a GPU")
def test_public_ops_run_triton_on_cuda():
    """On CUDA tensors the public names are the Triton kernels: same bits as calling them directly."""
    layout, values = rngs(2, "cuda")
    lens = [100, 3000]
    kv = paged_kv(lens, 16, 8, 128, torch.float16, "cuda", layout, values)
    q = queries(2, 32, 8, 128, torch.float16, "cuda", values)
    context_lens = torch.tensor(lens, dtype=torch.int32, device="cuda")
    args = (q, kv.k_cache, kv.v_cache, kv.tables, context_lens, 0.1)
    assert torch.equal(kernels.paged_decode_attention(*args), paged_decode_attention_triton(*args))
    cu_seqlens = torch.tensor([0, 1, 2], dtype=torch.int32, device="cuda")
    args = (q, kv.k_cache, kv.v_cache, cu_seqlens, context_lens, kv.tables, 0.1)
    assert torch.equal(kernels.paged_prefill_attention(*args), paged_prefill_attention_triton(*args))
