"""What the Triton kernel tests share: the interpreter switch, its patches, and paged KV inputs
built to expose stray reads and writes (shuffled block tables read through a strided view with -1
and garbage past each sequence, NaN in every cache slot no sequence owns)."""
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
ROOT = Path(__file__).resolve().parents[1]
CUDA = torch.cuda.is_available()
DEVICES = ["cpu"] if INTERPRET else [pytest.param("cuda", marks=pytest.mark.skipif(not CUDA, reason="no GPU"))]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
DTYPE_IDS = ["fp32", "fp16", "bf16"]
# Triton accumulates in fp32 but feeds P to the P @ V product in the input dtype, and rounds the output.
TOLERANCE = {torch.float32: 2e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}
GARBAGE_BLOCK = 1 << 30  # a block id far outside any cache: reading it would fault


def fix_interpreter() -> None:
    """Two gaps in Triton 3.6's interpreter that these kernels hit, patched in this process only.

    Loop bounds loaded from memory are 1-element arrays, which the interpreter turns into Python
    ints with `int(array)`; numpy >= 2.4 refuses that (triton-lang/triton#9171; the fix, #9172, is not in 3.6.0).
    bf16 values are stored as raw uint16 bits and `tl.dot` multiplies the bits (triton-lang/triton
    #11584, unsupported upstream); widening bf16 operands to fp32 first is exact and matches the
    GPU's bf16 dot, which multiplies exactly and accumulates in fp32.
    fp32 -> bf16 and fp32 -> fp8 casts truncate where the GPU rounds to nearest even.
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

    cast_impl = interpreter.InterpreterBuilder.cast_impl

    def cast(self, src, dst_type):
        """fp32 -> bf16 rounds to nearest even, as the GPU does; the interpreter truncates."""
        if src.dtype.scalar == tl.float32 and dst_type.scalar == tl.bfloat16:
            data = np.asarray(src.data, dtype=np.float32)
            bits = data.view(np.uint32)
            rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)
            rounded[np.isnan(data)] = 0x7FC0
            return interpreter.TensorHandle(rounded, tl.bfloat16)
        if src.dtype.scalar == tl.float32 and dst_type.scalar == tl.float8e4nv:  # torch rounds as the GPU does
            data = torch.from_numpy(np.ascontiguousarray(src.data, dtype=np.float32))
            return interpreter.TensorHandle(data.to(torch.float8_e4m3fn).view(torch.uint8).numpy(), tl.float8e4nv)
        return cast_impl(self, src, dst_type)

    fp_to_fp = interpreter.InterpreterBuilder.create_fp_to_fp

    def to_fp(self, src, dst_type, rounding_mode):
        if src.dtype.scalar == tl.float32 and dst_type.scalar in (tl.bfloat16, tl.float8e4nv):
            return cast(self, src, dst_type)
        return fp_to_fp(self, src, dst_type, rounding_mode)

    interpreter._patch_lang_tensor = patch_index
    interpreter.InterpreterBuilder.create_fp_to_fp = to_fp
    interpreter.InterpreterBuilder.create_dot = dot
    interpreter.InterpreterBuilder.cast_impl = cast
    interpreter.InterpreterBuilder.create_fp_trunc = lambda self, src, dst_type: cast(self, src, dst_type)


@dataclass
class InterpretedRun:
    returncode: int
    passed: int  # tests the child ran and passed
    output: str  # its report's tail, for the failure message


def run_interpreted(test_file: str) -> InterpretedRun:
    """Run `test_file` again in a child pytest with TRITON_INTERPRET=1 set from the start: Triton
    picks interpreter or compiler once, when first imported, and this process may have imported it."""
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    proc = subprocess.run([sys.executable, "-m", "pytest", test_file, "-q", "-p", "no:cacheprovider"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    summary = proc.stdout.strip().rsplit("\n", 1)[-1]
    print(summary)
    passed = re.search(r"(\d+) passed", summary)
    return InterpretedRun(proc.returncode, int(passed.group(1)) if passed else 0,
                          proc.stdout[-10000:] + proc.stderr[-3000:])


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


