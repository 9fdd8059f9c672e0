"""Steps replayed from CUDA graphs of the whole step: embedding, layers, logits, sampling.

`DecodeGraphs` covers decode-only steps; `PrefillGraphs` steps that end the prompts of one to 32
sequences in up to 1024 tokens (a new turn over a cached history, new chats over a cached
document), whose eager launch costs more host time than the GPU spends on it (31 chats' last
chunks: 24 ms of launching on the H200's host, about 1.5 ms a layer).

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
        self.meta = torch.zeros(7, largest, dtype=torch.int64, device=device)
        self.out = torch.zeros(largest, dtype=torch.int32, device=device)
        self._meta_host = [torch.zeros(7, largest, dtype=torch.int64, pin_memory=True) for _ in range(2)]
        self._turn = 0
        self.splits = {s: decode_num_splits(s, cfg.num_kv_heads, batch.max_context, device) for s in self.sizes}
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
        self.pool = pool  # the prefill graphs share it: no two graphs ever run at once
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


# (sequences, tokens) of the prefill graphs: one sequence of up to 256 tokens (a new turn, a new
# chat over a cached document), and up to 32 sequences' last chunks at once (chats arriving
# together); a step takes the first shape that holds it.
PREFILL_SHAPES = ((1, 16), (1, 32), (1, 64), (2, 64), (1, 128), (4, 128), (1, 256), (8, 256), (16, 512),
                  (32, 1024))
PREFILL_TOKENS = max(t for _, t in PREFILL_SHAPES)


def prefill_graph_tokens(max_num_batched_tokens: int) -> int:
    """The largest prefill graph a configuration captures: a quarter of its step, so the graphs'
    pool (which eager steps cannot reuse) stays small beside the eager steps' temporaries."""
    return min(PREFILL_TOKENS, max_num_batched_tokens // 4)


# rows of the per-sequence metadata: chunk offsets (cu_seqlens, one more than sequences), context
# after the chunk, the chunk's last token, the persistent row, the sampling counter
CU, P_CTX, LAST, P_ROW, P_COUNTER = range(5)


class PrefillGraphs:
    """Steps whose every sequence ends its prompt with one chunk and samples once: no decode rows,
    no forks. Padding sequences have empty chunks (they attend to nothing) and sample into the
    scratch row; padding tokens write no KV."""

    def __init__(self, model: LlamaForCausalLM, batch: InputBatch, device: torch.device, max_seqs: int,
                 max_step_tokens: int, pool=None) -> None:
        self.model = model
        self.batch = batch
        self.device = device
        largest = prefill_graph_tokens(max_step_tokens)
        self.shapes = [(n, t) for n, t in PREFILL_SHAPES if n <= max_seqs and t <= largest]
        tokens = max((t for _, t in self.shapes), default=0)
        seqs = max((n for n, _ in self.shapes), default=0)
        self.tokens = torch.zeros(3, tokens, dtype=torch.int64, device=device)  # host ids, positions, slots
        self.seqs = torch.zeros(5, seqs + 1, dtype=torch.int64, device=device)
        self.src_rows = torch.full((tokens,), -1, dtype=torch.int64, device=device)
        self.out = torch.zeros(seqs, dtype=torch.int32, device=device)
        self._host = [torch.zeros(3 * tokens + 5 * (seqs + 1), dtype=torch.int64, pin_memory=True) for _ in range(2)]
        self._turn = 0
        self.graphs: dict[tuple[int, int], torch.cuda.CUDAGraph] = {}
        self._capture(pool)

    def shape_for(self, step: StepInputs) -> tuple[int, int] | None:
        """The graph that can run this step, if any."""
        if not step.is_prefill_only:
            return None
        n, t = len(step.prefill_context_lens), step.num_tokens
        return next(((ns, ts) for ns, ts in self.shapes if n <= ns and t <= ts), None)

    def _step(self, shape: tuple[int, int]) -> None:
        n, size = shape
        t, q = self.tokens, self.seqs
        meta = AttentionMetadata(
            positions=t[1, :size], slot_mapping=t[2, :size], num_decode=0,
            decode_block_tables=self.batch.block_tables, decode_context_lens=q[P_CTX, :0],
            prefill_cu_seqlens=[], prefill_context_lens=[], prefill_block_tables=self.batch.block_tables,
            prefill_cu_seqlens_t=q[CU, :n + 1], prefill_context_lens_t=q[P_CTX, :n], max_prefill_len=size,
            max_prefill_context=self.batch.max_context, prefill_table_rows=q[P_ROW, :n])
        state = self.batch.state
        hidden, residual = self.model(t[0, :size], self.src_rows[:size], state.last_token, meta)
        logits = self.model.compute_logits(hidden, residual, q[LAST, :n])
        sample_triton(logits, q[P_ROW, :n], q[P_COUNTER, :n], state, out=self.out[:n])

    @torch.inference_mode()
    def _capture(self, pool) -> None:
        self.tokens[2].fill_(-1)  # no KV is written while capturing
        self.seqs[P_ROW].fill_(self.batch.scratch_row)
        for shape in sorted(self.shapes, key=lambda s: -s[1] * 1000 - s[0]):  # largest first: the rest reuse its memory
            self._step(shape)  # compiles the Triton kernels for this shape outside the capture
            torch.cuda.synchronize(self.device)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool):
                self._step(shape)
            pool = graph.pool()
            self.graphs[shape] = graph
        torch.cuda.synchronize(self.device)

    def run(self, step: StepInputs, shape: tuple[int, int]) -> torch.Tensor:
        """Replay the graph of `shape` for `step`; returns the sampled ids [sequences] (device)."""
        n_seqs, size = shape
        n, count = step.num_tokens, len(step.prefill_context_lens)
        tokens_len, seqs_len = self.tokens.shape[1], self.seqs.shape[1]
        host = self._host[self._turn]
        self._turn ^= 1
        h = host.numpy()
        tokens = h[:3 * tokens_len].reshape(3, tokens_len)
        tokens[:, n:size] = 0
        tokens[2, n:size] = -1
        tokens[0, :n], tokens[1, :n], tokens[2, :n] = step.host_ids, step.positions, step.slots
        seqs = h[3 * tokens_len:].reshape(5, seqs_len)
        seqs[CU, :count + 1] = step.prefill_cu_seqlens
        seqs[CU, count + 1:n_seqs + 1] = n  # padding sequences: empty chunks
        seqs[P_CTX, :count] = step.prefill_context_lens
        seqs[P_CTX, count:n_seqs] = 0
        seqs[LAST, :count] = step.last_rows
        seqs[LAST, count:n_seqs] = 0
        seqs[P_ROW, :count] = step.sample_rows
        seqs[P_ROW, count:n_seqs] = self.batch.scratch_row
        seqs[P_COUNTER, :count] = step.sample_counters
        seqs[P_COUNTER, count:n_seqs] = 0
        self.tokens.view(-1).copy_(host[:3 * tokens_len], non_blocking=True)
        self.seqs.view(-1).copy_(host[3 * tokens_len:], non_blocking=True)
        self.graphs[shape].replay()
        return self.out[:count]
