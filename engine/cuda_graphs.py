"""Decode steps replayed from CUDA graphs, one captured per batch size.

A decode step is ~10 kernels per layer on tiny inputs: launched one by one from Python, the GPU
waits on the host. A graph replays them all from one launch. Graphs read their inputs from
persistent buffers, so a replay copies the step's ids, positions, slots, block tables and
context lengths into those buffers (pinned host memory, asynchronous) and runs the graph of the
smallest captured size that fits; padding rows write nowhere (slot -1) and attend to nothing
(context 0). Batches larger than the largest size run eagerly.
"""
from __future__ import annotations

import bisect

import torch

from engine.model.attention import AttentionMetadata
from engine.model.llama import LlamaForCausalLM
from engine.step_inputs import StepInputs, host_tensor, pad_rows
from kernels.decode_attention import decode_num_splits, decode_workspace

CAPTURE_SIZES = (1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 192, 256)


class DecodeGraphs:
    def __init__(self, model: LlamaForCausalLM, max_num_seqs: int, max_blocks_per_seq: int,
                 device: torch.device) -> None:
        self.model = model
        self.device = device
        self.sizes = [s for s in CAPTURE_SIZES if s <= max_num_seqs] or [max_num_seqs]
        largest = self.sizes[-1]
        width = max_blocks_per_seq + 1  # one spare column: a table never has to be cut
        cfg = model.cfg
        i64, i32 = dict(dtype=torch.int64, device=device), dict(dtype=torch.int32, device=device)
        self.input_ids = torch.zeros(largest, **i64)
        self.positions = torch.zeros(largest, **i64)
        self.slot_mapping = torch.full((largest,), -1, **i64)
        self.block_tables = torch.zeros(largest, width, **i32)
        self.context_lens = torch.zeros(largest, **i32)
        max_context = width * model.layers[0].self_attn.k_cache.shape[1]
        splits = max(decode_num_splits(s, cfg.num_kv_heads, max_context, device) for s in self.sizes)
        self.workspace = decode_workspace(largest, cfg.num_heads, cfg.head_dim, splits, device).view(-1)
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.logits: dict[int, torch.Tensor] = {}
        self._capture()

    def fits(self, num_seqs: int) -> bool:
        return 0 < num_seqs <= self.sizes[-1]

    def _meta(self, size: int) -> AttentionMetadata:
        return AttentionMetadata(
            slot_mapping=self.slot_mapping[:size], num_decode=size,
            decode_block_tables=self.block_tables[:size], decode_context_lens=self.context_lens[:size],
            prefill_cu_seqlens=[0], prefill_context_lens=[], prefill_block_tables=self.block_tables[:0],
            decode_workspace=self.workspace)

    def _step(self, size: int) -> torch.Tensor:
        hidden = self.model(self.input_ids[:size], self.positions[:size], self._meta(size))
        return self.model.compute_logits(hidden)

    @torch.inference_mode()
    def _capture(self) -> None:
        pool = None
        for size in reversed(self.sizes):  # largest first: the smaller graphs reuse its memory
            self._step(size)  # compiles the Triton kernels for this shape outside the capture
            torch.cuda.synchronize(self.device)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool):
                self.logits[size] = self._step(size)
            pool = graph.pool()
            self.graphs[size] = graph
        torch.cuda.synchronize(self.device)

    def run(self, step: StepInputs) -> torch.Tensor:
        """Logits [num_seqs, vocab] for a decode-only step."""
        n = step.num_decode
        size = self.sizes[bisect.bisect_left(self.sizes, n)]
        pad = size - n
        dev = self.device
        self.input_ids[:size].copy_(host_tensor(step.input_ids + [0] * pad, torch.int64, dev), non_blocking=True)
        self.positions[:size].copy_(host_tensor(step.positions + [0] * pad, torch.int64, dev), non_blocking=True)
        self.slot_mapping[:size].copy_(host_tensor(step.slots + [-1] * pad, torch.int64, dev), non_blocking=True)
        self.context_lens[:size].copy_(
            host_tensor(step.decode_context_lens + [0] * pad, torch.int32, dev), non_blocking=True)
        # Only the columns in use: the kernel never reads a table past its context length.
        tables = pad_rows(step.decode_tables + [[]] * pad)
        cols = len(tables[0])
        self.block_tables[:size, :cols].copy_(host_tensor(tables, torch.int32, dev), non_blocking=True)
        self.graphs[size].replay()
        return self.logits[size][:n]
