"""Owns the model and the KV cache on the device; turns a scheduled batch into step tensors,
runs the forward pass (eagerly, or by replaying a captured decode graph), and samples."""
from __future__ import annotations

from pathlib import Path

import torch

from engine.config import EngineConfig
from engine.cuda_graphs import DecodeGraphs
from engine.loader import load_model
from engine.model.attention import AttentionMetadata
from engine.model.config import ModelConfig
from engine.sampler import SamplingRow, sample
from engine.scheduler import ScheduledBatch
from engine.sequence import Sequence
from engine.step_inputs import StepInputs, table_tensor, to_device


class ModelRunner:
    def __init__(self, config: EngineConfig, model_config: ModelConfig, folder: Path,
                 max_positions: int) -> None:
        self.config = config
        self.model_config = model_config
        self.device = torch.device(config.device)
        self.block_size = config.block_size
        self.model = load_model(folder, model_config, self.device, config.dtype, max_positions)
        self.num_blocks = self._num_kv_blocks()
        c = model_config
        # One allocation for every layer's K and V: [2, layers, blocks, block_size, kv_heads, head_dim].
        self.kv_cache = torch.zeros(2, c.num_layers, self.num_blocks, self.block_size, c.num_kv_heads,
                                    c.head_dim, dtype=config.dtype, device=self.device)
        self.model.bind_kv_cache(list(self.kv_cache[0]), list(self.kv_cache[1]))
        self.graphs: DecodeGraphs | None = None
        if self.device.type == "cuda" and config.cuda_graphs:
            max_blocks = -(-min(max_positions, self.num_blocks * self.block_size) // self.block_size)
            self.graphs = DecodeGraphs(self.model, config.max_num_seqs, max_blocks, self.device)

    def bytes_per_block(self) -> int:
        c = self.model_config
        return 2 * c.num_layers * self.block_size * c.num_kv_heads * c.head_dim * self.config.dtype.itemsize

    def _num_kv_blocks(self) -> int:
        if self.config.num_kv_blocks is not None:
            return self.config.num_kv_blocks
        if self.device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(self.device)
            budget = int(free * self.config.kv_memory_fraction)
        else:
            budget = self.config.cpu_kv_memory_bytes
        num = budget // self.bytes_per_block()
        if num < 1:
            raise MemoryError("no memory left for the KV cache after loading the model")
        return num

    @torch.inference_mode()
    def execute(self, batch: ScheduledBatch) -> tuple[torch.Tensor, list[Sequence]]:
        """Run one step. Returns logits for the sequences whose known tokens are now all
        computed (they get a new token), in batch order, with those sequences."""
        if batch.copies:  # copy-on-write before anything writes to the copies
            src = to_device([s for s, _ in batch.copies], torch.int64, self.device)
            dst = to_device([d for _, d in batch.copies], torch.int64, self.device)
            self.kv_cache[:, :, dst] = self.kv_cache[:, :, src]
        step = self._prepare(batch)
        if not step.last_seqs:
            self._forward(step)
            return torch.empty(0, device=self.device), []
        if self.graphs is not None and step.num_decode == len(step.input_ids) and self.graphs.fits(step.num_decode):
            return self.graphs.run(step), step.last_seqs
        hidden = self._forward(step)
        last = to_device(step.last_rows, torch.int64, self.device)
        return self.model.compute_logits(hidden[last]), step.last_seqs

    def sample(self, logits: torch.Tensor, rows: list[SamplingRow]) -> list[int]:
        """The only host sync of a step: reading the sampled ids."""
        return sample(logits, rows).tolist()

    def _forward(self, step: StepInputs) -> torch.Tensor:
        dev = self.device
        prefill_lens = [b - a for a, b in zip(step.prefill_cu_seqlens, step.prefill_cu_seqlens[1:])]
        meta = AttentionMetadata(
            slot_mapping=to_device(step.slots, torch.int64, dev),
            num_decode=step.num_decode,
            decode_block_tables=table_tensor(step.decode_tables, dev),
            decode_context_lens=to_device(step.decode_context_lens, torch.int32, dev),
            prefill_cu_seqlens=step.prefill_cu_seqlens,
            prefill_context_lens=step.prefill_context_lens,
            prefill_block_tables=table_tensor(step.prefill_tables, dev),
            prefill_cu_seqlens_t=to_device(step.prefill_cu_seqlens, torch.int32, dev),
            prefill_context_lens_t=to_device(step.prefill_context_lens, torch.int32, dev),
            max_prefill_len=max(prefill_lens, default=0),
        )
        return self.model(to_device(step.input_ids, torch.int64, dev), to_device(step.positions, torch.int64, dev), meta)

    def _prepare(self, batch: ScheduledBatch) -> StepInputs:
        bs = self.block_size
        step = StepInputs(num_decode=batch.num_decode)
        for i, (seq, n) in enumerate(zip(batch.seqs, batch.num_new_tokens)):
            start = seq.num_computed_tokens
            table = seq.block_table
            step.input_ids.extend(seq.token_ids[start:start + n])
            step.positions.extend(range(start, start + n))
            step.slots.extend(table[p // bs] * bs + p % bs for p in range(start, start + n))
            if i < batch.num_decode:
                step.decode_context_lens.append(start + n)
                step.decode_tables.append(table)
            else:
                step.prefill_cu_seqlens.append(step.prefill_cu_seqlens[-1] + n)
                step.prefill_context_lens.append(start + n)
                step.prefill_tables.append(table)
            if start + n == seq.num_tokens:
                step.last_rows.append(len(step.input_ids) - 1)
                step.last_seqs.append(seq)
        return step
