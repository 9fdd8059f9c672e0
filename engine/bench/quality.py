"""Teacher-forced logits of a text, for quality checks: perplexity and top-1 agreement.

The text runs through the engine's model in chunks, as chunked prefill does, so every chunk after
the first reads the earlier tokens' K and V back from the paged cache (in its dtype: fp8 K/V are
what is measured). Blocks are taken from the start of the pool: use an engine that serves nothing
else (its cached prefixes are overwritten).
"""
from __future__ import annotations

import math

import torch

from engine.llm import LLM
from engine.model.attention import AttentionMetadata


@torch.inference_mode()
def teacher_forced_logits(llm: LLM, ids: list[int], chunk: int = 64) -> torch.Tensor:
    """fp32 logits [len(ids), vocab]: row i predicts ids[i + 1]."""
    runner = llm.engine.runner
    dev, bs = runner.device, runner.block_size
    blocks = -(-len(ids) // bs)
    if blocks > runner.num_blocks:
        raise ValueError(f"{len(ids)} tokens need {blocks} KV blocks; the pool has {runner.num_blocks}")
    table = torch.arange(blocks, dtype=torch.int32, device=dev)[None, :]
    last_token = runner.input_batch.state.last_token
    out = []
    for start in range(0, len(ids), chunk):
        end = min(len(ids), start + chunk)
        positions = torch.arange(start, end, device=dev)
        meta = AttentionMetadata(
            positions=positions, slot_mapping=positions, num_decode=0,
            decode_block_tables=table[:0], decode_context_lens=positions[:0],
            prefill_cu_seqlens=[0, end - start], prefill_context_lens=[end], prefill_block_tables=table,
            prefill_cu_seqlens_t=torch.tensor([0, end - start], device=dev),
            prefill_context_lens_t=torch.tensor([end], device=dev), max_prefill_len=end - start)
        host_ids = torch.tensor(ids[start:end], device=dev)
        hidden, residual = runner.model(host_ids, torch.full_like(host_ids, -1), last_token, meta)
        out.append(runner.model.compute_logits(hidden, residual).float())
    return torch.cat(out)


def perplexity(logits: torch.Tensor, ids: list[int]) -> float:
    targets = torch.tensor(ids[1:], device=logits.device)
    nll = torch.nn.functional.cross_entropy(logits[:-1], targets, reduction="mean")
    return math.exp(float(nll))


def top1_agreement(logits: torch.Tensor, reference: torch.Tensor, near_tie: float) -> tuple[int, int]:
    """(agreeing, counted) argmax positions, counting only those where the reference's top two
    logits are at least `near_tie` apart (closer ones are decided by rounding)."""
    top2 = reference.topk(2, dim=-1).values
    decisive = (top2[:, 0] - top2[:, 1]) >= near_tie
    agree = (logits.argmax(-1) == reference.argmax(-1)) & decisive
    return int(agree.sum()), int(decisive.sum())
