"""Turn one logits row per sequence into one token per sequence, on the logits' device.

Filters are applied in the order transformers applies its logits processors (repetition
penalty, temperature, top-k, top-p, min-p), so a seeded run means the same thing here as there.
Each seeded sequence draws from its own generator: its samples do not depend on what else is
in the batch.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from engine.sampling_params import SamplingParams


@dataclass
class SamplingRow:
    params: SamplingParams
    seen_token_ids: list[int]  # prompt + output so far, for the repetition penalty
    generator: torch.Generator | None


def sample(logits: torch.Tensor, rows: list[SamplingRow]) -> torch.Tensor:
    """logits: [num_rows, vocab] float. Returns [num_rows] int64 token ids."""
    logits = logits.float()
    if all(r.params.greedy and r.params.repetition_penalty == 1.0 for r in rows):
        return logits.argmax(dim=-1)
    logits = apply_repetition_penalty(logits, rows)
    greedy = torch.tensor([r.params.greedy for r in rows], device=logits.device)
    temperature = torch.tensor([r.params.temperature or 1.0 for r in rows], device=logits.device)
    probs = filter_probs(torch.softmax(logits / temperature[:, None], dim=-1), rows)
    # Exponential race: argmax(p / E) with E ~ Exp(1) draws from p, one generator per row.
    noise = torch.empty_like(probs)
    for i, r in enumerate(rows):
        noise[i].exponential_(generator=r.generator)
    drawn = (probs / noise).argmax(dim=-1)
    return torch.where(greedy, logits.argmax(dim=-1), drawn)


def apply_repetition_penalty(logits: torch.Tensor, rows: list[SamplingRow]) -> torch.Tensor:
    """CTRL-style: divide positive logits of seen tokens by the penalty, multiply negative ones."""
    for i, r in enumerate(rows):
        penalty = r.params.repetition_penalty
        if penalty == 1.0 or not r.seen_token_ids:
            continue
        ids = torch.tensor(sorted(set(r.seen_token_ids)), device=logits.device)
        seen = logits[i, ids]
        logits[i, ids] = torch.where(seen > 0, seen / penalty, seen * penalty)
    return logits


def filter_probs(probs: torch.Tensor, rows: list[SamplingRow]) -> torch.Tensor:
    """Zero out tokens outside top-k, top-p and min-p, per row, in one sort."""
    top_k = torch.tensor([r.params.top_k or probs.shape[-1] for r in rows], device=probs.device)
    top_p = torch.tensor([r.params.top_p for r in rows], device=probs.device)
    min_p = torch.tensor([r.params.min_p for r in rows], device=probs.device)
    sorted_probs, order = probs.sort(dim=-1, descending=True)
    rank = torch.arange(probs.shape[-1], device=probs.device)[None, :]
    sorted_probs = sorted_probs.masked_fill(rank >= top_k[:, None], 0.0)
    sorted_probs = sorted_probs / sorted_probs.sum(dim=-1, keepdim=True)
    # top-p over what top-k kept: keep the smallest prefix whose mass reaches p.
    mass_before = sorted_probs.cumsum(dim=-1) - sorted_probs
    drop = sorted_probs == 0
    drop |= mass_before >= top_p[:, None]
    drop |= sorted_probs < (min_p * sorted_probs[:, 0])[:, None]
    drop[:, 0] = False
    sorted_probs = sorted_probs.masked_fill(drop, 0.0)
    return torch.zeros_like(probs).scatter_(-1, order, sorted_probs)
