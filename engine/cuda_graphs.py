"""Steps replayed from CUDA graphs of the whole step: embedding, layers, logits, sampling.

`DecodeGraphs` covers decode-only steps; `PrefillGraphs` the last prefill chunk of a single
sequence of up to 256 tokens (a new turn over a cached history, a new chat over a cached
document), whose eager launch would cost more host time than the GPU spends on it.

One graph is captured per batch size. Graphs read persistent buffers: a replay copies the step's rows, positions,
slots, context lengths and sampling counters there from pinned memory in one copy (block tables
live in the persistent batch, kept up to date by the runner), replays, and leaves the sampled
ids in `out` and in each row's `last_token`, where the next step's embedding reads them.
Padding rows write no KV (slot -1), attend to nothing (context 0) and sample into a scratch row.
Batches larger than the largest size run eagerly.
"""
from __future__ import annotations

import bisect

import torch

from engine.input_batch import InputBatch
from engine.model.attention import AttentionMetadata
from engine.model.llama import LlamaForCausalLM
from engine.step_inputs import StepInputs
from kernels.decode_attention import decode_num_splits, decode_workspace
from kernels.sampling import sample_triton

CAPTURE_SIZES = (1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 192, 256)
# rows of the packed per-step metadata: input token source row, position, KV slot, context length,
# persistent row (block table, sampling parameters), sampling counter, host token id
SRC, POS, SLOT, CTX, ROW, COUNTER, HOST_ID = range(7)


class DecodeGraphs:
    def __init__(self, model: LlamaForCausalLM, batch: InputBatch, max_num_seqs: int, device: torch.device) -> None:
        self.model = model
        self.batch = batch
        self.device = device
        self.sizes = [s for s in CAPTURE_SIZES if s <= max_num_seqs] or [max_num_seqs]
        largest = self.sizes[-1]
        cfg = model.cfg
        block_size = model.layers[0].self_attn.k_cache.shape[1]
        self.meta = torch.zeros(7, largest, dtype=torch.int64, device=device)
        self.out = torch.zeros(largest, dtype=torch.int32, device=device)
        self._meta_host = [torch.zeros(7, largest, dtype=torch.int64, pin_memory=True) for _ in range(2)]
        self._turn = 0
        max_context = batch.width * block_size
        self.splits = {s: decode_num_splits(s, cfg.num_kv_heads, max_context, device) for s in self.sizes}
        self.workspace = decode_workspace(largest, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim,
                                          max(self.splits.values()), device)
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.logits: dict[int, torch.Tensor] = {}
        self._capture()

    def fits(self, num_seqs: int) -> bool:
        return 0 < num_seqs <= self.sizes[-1]

    def _step(self, size: int) -> torch.Tensor:
        m = self.meta
        meta = AttentionMetadata(
            positions=m[POS, :size], slot_mapping=m[SLOT, :size], num_decode=size,
            decode_block_tables=self.batch.block_tables, decode_context_lens=m[CTX, :size],
            prefill_cu_seqlens=[0], prefill_context_lens=[], prefill_block_tables=self.batch.block_tables[:0],
            decode_workspace=self.workspace, decode_num_splits=self.splits[size], decode_table_rows=m[ROW, :size])
        state = self.batch.state
        hidden, residual = self.model(m[HOST_ID, :size], m[SRC, :size], state.last_token, meta)
        logits = self.model.compute_logits(hidden, residual)
        sample_triton(logits, m[ROW, :size], m[COUNTER, :size], state, out=self.out[:size])
        return logits

    @torch.inference_mode()
    def _capture(self) -> None:
        pool = None
        self.meta[SRC].fill_(-1)
        self.meta[SLOT].fill_(-1)
        self.meta[ROW].fill_(self.batch.scratch_row)
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
        """Replay the graph for a decode-only step; returns the sampled ids [num_seqs] (device)."""
        n = step.num_decode
        size = self.sizes[bisect.bisect_left(self.sizes, n)]
        meta = self._meta_host[self._turn]
        self._turn ^= 1
        m = meta.numpy()
        m[:, n:size] = 0
        m[SRC, n:size] = -1
        m[SLOT, n:size] = -1
        m[ROW, n:size] = self.batch.scratch_row
        m[SRC, :n] = step.src_rows
        m[POS, :n] = step.positions
        m[SLOT, :n] = step.slots
        m[CTX, :n] = step.decode_context_lens
        m[ROW, :n] = step.sample_rows
        m[COUNTER, :n] = step.sample_counters
        m[HOST_ID, :n] = step.host_ids
        self.meta.copy_(meta, non_blocking=True)
        self.graphs[size].replay()
        return self.out[:n]


PREFILL_SIZES = (16, 32, 64, 128, 256)
# scalars of a one-sequence prefill graph: chunk start and end (cu_seqlens), context after it, the
# chunk's last row, the sequence's persistent row, the sampling counter
CU0, CU1, P_CTX, LAST, P_ROW, P_COUNTER = range(6)


class PrefillGraphs:
    def __init__(self, model: LlamaForCausalLM, batch: InputBatch, device: torch.device) -> None:
        self.model = model
        self.batch = batch
        self.device = device
        largest = PREFILL_SIZES[-1]
        self.tokens = torch.zeros(3, largest, dtype=torch.int64, device=device)  # host ids, positions, slots
        self.scalars = torch.zeros(8, dtype=torch.int64, device=device)
        self.src_rows = torch.full((largest,), -1, dtype=torch.int64, device=device)
        self.out = torch.zeros(1, dtype=torch.int32, device=device)
        self._host = [torch.zeros(3 * largest + 8, dtype=torch.int64, pin_memory=True) for _ in range(2)]
        self._turn = 0
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self._capture()

    def fits(self, num_tokens: int) -> bool:
        return 0 < num_tokens <= PREFILL_SIZES[-1]

    def _step(self, size: int) -> None:
        t, c = self.tokens, self.scalars
        meta = AttentionMetadata(
            positions=t[1, :size], slot_mapping=t[2, :size], num_decode=0,
            decode_block_tables=self.batch.block_tables, decode_context_lens=c[:0],
            prefill_cu_seqlens=[0, size], prefill_context_lens=[size], prefill_block_tables=self.batch.block_tables,
            prefill_cu_seqlens_t=c[CU0:CU1 + 1], prefill_context_lens_t=c[P_CTX:P_CTX + 1], max_prefill_len=size,
            prefill_table_rows=c[P_ROW:P_ROW + 1])
        state = self.batch.state
        hidden, residual = self.model(t[0, :size], self.src_rows[:size], state.last_token, meta)
        logits = self.model.compute_logits(hidden, residual, c[LAST:LAST + 1])
        sample_triton(logits, c[P_ROW:P_ROW + 1], c[P_COUNTER:P_COUNTER + 1], state, out=self.out)

    @torch.inference_mode()
    def _capture(self) -> None:
        self.tokens[2].fill_(-1)  # no KV is written while capturing
        self.scalars[P_ROW] = self.batch.scratch_row
        pool = None
        for size in reversed(PREFILL_SIZES):
            self._step(size)
            torch.cuda.synchronize(self.device)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool):
                self._step(size)
            pool = graph.pool()
            self.graphs[size] = graph
        torch.cuda.synchronize(self.device)

    def run(self, step: StepInputs) -> torch.Tensor:
        """Replay for a one-sequence step that ends its prompt; returns the sampled id [1] (device)."""
        n = step.num_tokens
        size = PREFILL_SIZES[bisect.bisect_left(PREFILL_SIZES, n)]
        largest = PREFILL_SIZES[-1]
        host = self._host[self._turn]
        self._turn ^= 1
        h = host.numpy()
        tokens = h[:3 * largest].reshape(3, largest)
        tokens[:, n:size] = 0
        tokens[2, n:size] = -1
        tokens[0, :n], tokens[1, :n], tokens[2, :n] = step.host_ids, step.positions, step.slots
        h[3 * largest:3 * largest + 6] = (0, n, step.prefill_context_lens[0], n - 1, step.sample_rows[0],
                                          step.sample_counters[0])
        self.tokens.view(-1).copy_(host[:3 * largest], non_blocking=True)
        self.scalars[:6].copy_(host[3 * largest:3 * largest + 6], non_blocking=True)
        self.graphs[size].replay()
        return self.out
