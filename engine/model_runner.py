"""Owns the model, the KV cache and the persistent batch on the device; launches steps.

`launch` enqueues a whole step (copy-on-write copies, inputs, forward, sampling, the copy of the
sampled ids to pinned host memory) and returns at once on a GPU; `InFlightStep.tokens()` waits
for the ids. Sampled ids also stay on the device (`last_token` of each row), so the next step
can be launched before they are read. Decode-only steps replay a CUDA graph of the whole step,
sampling included.
"""
from __future__ import annotations

from dataclasses import dataclass
import logging
import os

import numpy as np
import torch

import kernels
from engine.config import EngineConfig
from engine.cuda_graphs import DecodeGraphs, PrefillGraphs
from engine.input_batch import InputBatch
from engine.loader import ModelSource, load_model, weight_sizes
from engine import kv_scales
from engine.memory import CONTEXT_BYTES, MemoryPlan, fit_working_memory, gib, working_bytes
from engine.model.attention import AttentionMetadata
from engine.model.config import ModelConfig
from engine.scheduler import ScheduledBatch
from engine.step_inputs import Sample, StagingBuffers, StepInputs, build_step, upload_table
from kernels import cpu_int4
from kernels.decode_attention import DecodeWorkspace, decode_num_splits, decode_workspace, plan_decode
from kernels.prefill_attention import warm_up_prefill_attention


log = logging.getLogger(__name__)
CPU_DENSE_LIMIT = 4 << 30  # above this a packed model stays packed on the CPU


def physical_memory() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # not POSIX
        return 8 << 30


@dataclass
class InFlightStep:
    """A launched step: who sampled, and where their tokens arrive."""

    samples: list[Sample]
    host: torch.Tensor | None = None  # pinned int32, filled by an asynchronous copy
    event: torch.cuda.Event | None = None
    ready: list[int] | None = None  # CPU: the tokens, computed synchronously

    def tokens(self) -> list[int]:
        """The sampled ids, in sample order (waits for the step on a GPU)."""
        if self.ready is None:
            self.event.synchronize()
            self.ready = self.host[:len(self.samples)].tolist()
        return self.ready


class ModelRunner:
    def __init__(self, config: EngineConfig, model_config: ModelConfig, source: ModelSource,
                 max_positions: int, calibration_ids: list[int] | None = None) -> None:
        """`calibration_ids`: the text an fp8 KV cache's per-layer scales are measured on."""
        self.config = config
        self.model_config = model_config
        self.device = torch.device(config.device)
        self.block_size = config.block_size
        cuda = self.device.type == "cuda"
        dense = self._dequantize_on_cpu(source) if not cuda else bool(config.dequantize_weights)
        sizes = weight_sizes(source, model_config, config.dtype, config.quantization, dense)
        self.memory_plan: MemoryPlan | None = None
        if cuda and config.gpu_memory_limit is not None:
            def activations(step_tokens: int, max_seqs: int) -> int:
                return working_bytes(model_config, step_tokens, max_seqs, config.dtype.itemsize,
                                     sizes.largest_projection_dense, config.cuda_graphs)
            asked = MemoryPlan(config.gpu_memory_limit, sizes.total,
                               activations(config.max_num_batched_tokens, config.max_num_seqs),
                               self.bytes_per_block(), self.block_size)
            self.memory_plan, step_tokens, max_seqs = fit_working_memory(
                asked, config.max_num_batched_tokens, config.max_num_seqs, activations)
            if (step_tokens, max_seqs) != (config.max_num_batched_tokens, config.max_num_seqs):
                log.info("prefill steps of %d tokens and %d sequences at once instead of %d and %d: under the %s "
                         "limit that holds %d more tokens of context", step_tokens, max_seqs,
                         config.max_num_batched_tokens, config.max_num_seqs, gib(config.gpu_memory_limit),
                         self.memory_plan.context_tokens - asked.context_tokens)
                config.max_num_batched_tokens, config.max_num_seqs = step_tokens, max_seqs  # the scheduler's too
            self.memory_plan.check(source.describe())  # before a byte is allocated
        self.model = load_model(source, model_config, self.device, config.dtype, max_positions,
                                config.quantization, dense,
                                config.cpu_int4_decode and cpu_int4.usable(self.device, config.dtype))
        self.weights_dense = dense
        if self.memory_plan is not None:
            self.memory_plan.weights = self.model.weight_bytes()
            total = torch.cuda.get_device_properties(self.device).total_memory
            torch.cuda.set_per_process_memory_fraction(  # what the CUDA context takes is outside torch's count
                min(1.0, (config.gpu_memory_limit - CONTEXT_BYTES) / total),
                self.device.index if self.device.index is not None else torch.cuda.current_device())
        self.kv_factors: list[tuple[float, float]] | None = None  # fp8: each layer's K and V scale
        if config.kv_dtype == torch.float8_e4m3fn and calibration_ids:  # before any KV or graph exists
            self.kv_factors = kv_scales.fold(
                self.model, kv_scales.measure(self.model, calibration_ids, self.block_size, config.dtype))
        if cuda:  # the loader's temporaries leave cached segments that would fragment the KV pool's room
            torch.cuda.empty_cache()
        self.num_blocks = self._num_kv_blocks()
        c = model_config
        # One allocation for every layer's K and V: [2, layers, blocks, block_size, kv_heads, head_dim].
        self.kv_cache = torch.zeros(2, c.num_layers, self.num_blocks, self.block_size, c.num_kv_heads,
                                    c.head_dim, dtype=config.kv_dtype, device=self.device)
        self.model.bind_kv_cache(list(self.kv_cache[0]), list(self.kv_cache[1]))
        max_blocks_per_seq = -(-min(max_positions, self.num_blocks * self.block_size) // self.block_size)
        self.input_batch = InputBatch(config.max_num_seqs, c.vocab_size, self.device, max_blocks_per_seq,
                                      self.block_size)
        self.staging = StagingBuffers(8 * config.max_num_batched_tokens + 16 * config.max_num_seqs + 4096, self.device)
        self._tokens_host = [torch.empty(4 * config.max_num_seqs, dtype=torch.int32, pin_memory=cuda)
                             for _ in range(2)]
        self._turn = 0
        self.graphs: DecodeGraphs | None = None
        self.decode_workspace: DecodeWorkspace | None = None
        self.prefill_graphs: PrefillGraphs | None = None
        if cuda and config.cuda_graphs:
            self.graphs = DecodeGraphs(self.model, self.input_batch, config.max_num_seqs, self.device)
            self.decode_workspace = self.graphs.workspace  # eager steps never run beside a replay
            self.prefill_graphs = PrefillGraphs(self.model, self.input_batch, self.device, config.max_num_seqs,
                                                config.max_num_batched_tokens, self.graphs.pool)
        elif cuda:
            splits = decode_num_splits(1, c.num_kv_heads, self.input_batch.max_context, self.device)
            self.decode_workspace = decode_workspace(config.max_num_seqs, c.num_heads, c.num_kv_heads, c.head_dim,
                                                     splits, self.device)
        if cuda:
            attn = self.model.layers[0].self_attn
            warm_up_prefill_attention(config.dtype, attn.k_cache, attn.v_cache, c.num_heads,
                                      self.input_batch.max_context)

    def _dequantize_on_cpu(self, source: ModelSource) -> bool:
        """On the CPU: dequantize packed weights once when the dense model fits easily in RAM."""
        if self.config.dequantize_weights is not None:
            return self.config.dequantize_weights
        if source.gguf is None:
            return True
        sizes = weight_sizes(source, self.model_config, self.config.dtype, None, True)
        return sizes.dense_if_dequantized <= min(CPU_DENSE_LIMIT, physical_memory() // 4)

    def bytes_per_block(self) -> int:
        c = self.model_config
        return 2 * c.num_layers * self.block_size * c.num_kv_heads * c.head_dim * self.config.kv_dtype.itemsize

    def _kv_room_under_limit(self) -> int:
        """Bytes the KV pool can take under the limit as the allocator stands after loading: freed
        holes inside segments that weights still use cannot hold the pool, only the step's
        temporaries (the plan counts neither)."""
        reserved = torch.cuda.memory_reserved(self.device)
        holes = reserved - torch.cuda.memory_allocated(self.device)
        return self.config.gpu_memory_limit - CONTEXT_BYTES - reserved - max(0, self.memory_plan.activations - holes)

    def _num_kv_blocks(self) -> int:
        if self.config.num_kv_blocks is not None:
            return self.config.num_kv_blocks
        if self.memory_plan is not None:
            num = min(self.memory_plan.kv_blocks, self._kv_room_under_limit() // self.bytes_per_block())
        elif self.device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(self.device)
            num = int(free * self.config.kv_memory_fraction) // self.bytes_per_block()
        else:
            num = self.config.cpu_kv_memory_bytes // self.bytes_per_block()
        if num < 1:
            raise MemoryError("no memory left for the KV cache after loading the model")
        return num

    @torch.inference_mode()
    def launch(self, batch: ScheduledBatch, samples: list[Sample]) -> InFlightStep:
        """Enqueue one step. `samples` are the sequences that draw a token from it."""
        self.staging.next_step()
        self.input_batch.sync()
        if self.device.type == "cuda" and (updates := self.input_batch.table_updates(batch.seqs)) is not None:
            rows, cols, blocks = self.staging.upload(*updates)
            self.input_batch.block_tables[rows, cols] = blocks.to(torch.int32)
        if batch.copies:  # copy-on-write before anything writes to the copies
            src, dst = self.staging.upload(np.asarray(batch.copies, dtype=np.int64).T.copy())[0]
            self.kv_cache[:, :, dst] = self.kv_cache[:, :, src]
        step = build_step(batch, samples, self.block_size)
        if self.graphs is not None and step.is_decode_only and self.graphs.fits(step.num_decode):
            tokens = self.graphs.run(step)
        elif self.prefill_graphs is not None and (shape := self.prefill_graphs.shape_for(step)) is not None:
            tokens = self.prefill_graphs.run(step, shape)
        else:
            tokens = self._eager(step)
        return self._collect(tokens, samples)

    def _eager(self, step: StepInputs) -> torch.Tensor | None:
        dev = self.device
        decode_rows = np.fromiter((s.row for s in step.decode_seqs), dtype=np.int64, count=step.num_decode)
        arrays = [step.host_ids, step.src_rows, step.positions, step.slots, step.decode_context_lens,
                  np.asarray(step.prefill_cu_seqlens, dtype=np.int64),
                  np.asarray(step.prefill_context_lens, dtype=np.int64),
                  step.last_rows, step.sample_logits, step.sample_rows, step.sample_counters, decode_rows]
        if dev.type == "cuda":
            tensors = self.staging.upload(*arrays)
        else:
            tensors = [torch.from_numpy(a) for a in arrays]
        (host_ids, src_rows, positions, slots, decode_ctx, cu, prefill_ctx, last_rows, logit_rows, rows, counters,
         decode_rows_t) = tensors
        nd = step.num_decode
        splits, plan = None, None
        if nd and dev.type == "cuda":  # as a graph of this size would: only kernels compiled at capture
            splits = decode_num_splits(nd, self.model_config.num_kv_heads, self.input_batch.max_context, dev)
        elif nd:
            plan = plan_decode(step.decode_tables, step.decode_context_lens.tolist(), self.block_size)
        prefill_lens = np.diff(step.prefill_cu_seqlens)
        meta = AttentionMetadata(
            positions=positions, slot_mapping=slots, num_decode=nd,
            decode_block_tables=self.input_batch.block_tables if dev.type == "cuda" else None,
            decode_context_lens=decode_ctx, decode_table_rows=decode_rows_t,
            prefill_cu_seqlens=step.prefill_cu_seqlens, prefill_context_lens=step.prefill_context_lens,
            prefill_block_tables=upload_table(step.prefill_tables, dev),
            prefill_cu_seqlens_t=cu, prefill_context_lens_t=prefill_ctx,
            max_prefill_len=int(prefill_lens.max()) if len(prefill_lens) else 0,
            max_prefill_context=self.input_batch.max_context,  # the splits a graph would take
            decode_num_splits=splits, decode_plan=plan, decode_workspace=self.decode_workspace)
        state = self.input_batch.state
        hidden, residual = self.model(host_ids, src_rows, state.last_token, meta)
        if not len(step.sample_rows):
            return None
        logits = self.model.compute_logits(hidden, residual, last_rows)
        return kernels.sample(logits, rows, counters, state, logit_rows=logit_rows)

    def _collect(self, tokens: torch.Tensor | None, samples: list[Sample]) -> InFlightStep:
        for s in samples:
            s.seq.row_has_token = True
        if tokens is None:
            return InFlightStep(samples, ready=[])
        if self.device.type != "cuda":
            return InFlightStep(samples, ready=tokens.tolist())
        host = self._tokens_host[self._turn]
        self._turn ^= 1
        if len(samples) > host.numel():
            host = torch.empty(len(samples), dtype=torch.int32, pin_memory=True)
        host[:len(samples)].copy_(tokens[:len(samples)], non_blocking=True)
        event = torch.cuda.Event()
        event.record()
        return InFlightStep(samples, host, event)
