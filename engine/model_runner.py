"""Owns the model and the KV cache on the device; turns a scheduled batch into step tensors,
runs the forward pass, and samples."""
from __future__ import annotations

from pathlib import Path

import torch

from engine.config import EngineConfig
from engine.loader import load_model
from engine.model.attention import AttentionMetadata
from engine.model.config import ModelConfig
from engine.sampler import SamplingRow, sample
from engine.scheduler import ScheduledBatch
from engine.sequence import Sequence


class ModelRunner:
    def __init__(self, config: EngineConfig, model_config: ModelConfig, folder: Path,
                 max_positions: int, dummy_weights: bool = False) -> None:
        self.config = config
        self.model_config = model_config
        self.device = torch.device(config.device)
        self.block_size = config.block_size
        self.model = load_model(folder, model_config, self.device, config.dtype, max_positions, dummy_weights)
        self.num_blocks = self._num_kv_blocks()
        c = model_config
        # One allocation for every layer's K and V: [2, layers, blocks, block_size, kv_heads, head_dim].
        self.kv_cache = torch.zeros(2, c.num_layers, self.num_blocks, self.block_size, c.num_kv_heads,
                                    c.head_dim, dtype=config.dtype, device=self.device)
        self.model.bind_kv_cache(list(self.kv_cache[0]), list(self.kv_cache[1]))

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
        for src, dst in batch.copies:  # copy-on-write before anything writes to `dst`
            self.kv_cache[:, :, dst].copy_(self.kv_cache[:, :, src])
        input_ids, positions, meta, last_rows, last_seqs = self._prepare(batch)
        hidden = self.model(input_ids, positions, meta)
        logits = self.model.compute_logits(hidden[last_rows]) if last_seqs else hidden.new_empty(0)
        return logits, last_seqs

    def sample(self, logits: torch.Tensor, rows: list[SamplingRow]) -> list[int]:
        """The only host sync of a step: reading the sampled ids."""
        return sample(logits, rows).tolist()

    def _prepare(self, batch: ScheduledBatch):
        bs = self.block_size
        ids: list[int] = []
        pos: list[int] = []
        slots: list[int] = []
        last_rows: list[int] = []
        last_seqs: list[Sequence] = []
        decode_ctx: list[int] = []
        prefill_cu: list[int] = [0]
        prefill_ctx: list[int] = []
        for i, (seq, n) in enumerate(zip(batch.seqs, batch.num_new_tokens)):
            start = seq.num_computed_tokens
            tokens = seq.token_ids[start:start + n]
            table = seq.block_table
            ids.extend(tokens)
            pos.extend(range(start, start + n))
            slots.extend(table[p // bs] * bs + p % bs for p in range(start, start + n))
            if i < batch.num_decode:
                decode_ctx.append(start + n)
            else:
                prefill_cu.append(prefill_cu[-1] + n)
                prefill_ctx.append(start + n)
            if start + n == seq.num_tokens:
                last_rows.append(len(ids) - 1)
                last_seqs.append(seq)
        dev = self.device
        nd = batch.num_decode
        meta = AttentionMetadata(
            slot_mapping=torch.tensor(slots, dtype=torch.int64, device=dev),
            num_decode=nd,
            decode_block_tables=self._block_tables(batch.seqs[:nd]),
            decode_context_lens=torch.tensor(decode_ctx, dtype=torch.int32, device=dev),
            prefill_cu_seqlens=prefill_cu,
            prefill_context_lens=prefill_ctx,
            prefill_block_tables=self._block_tables(batch.seqs[nd:]),
        )
        input_ids = torch.tensor(ids, dtype=torch.int64, device=dev)
        positions = torch.tensor(pos, dtype=torch.int64, device=dev)
        return input_ids, positions, meta, torch.tensor(last_rows, device=dev), last_seqs

    def _block_tables(self, seqs: list[Sequence]) -> torch.Tensor:
        width = max((len(s.block_table) for s in seqs), default=0)
        rows = [s.block_table + [-1] * (width - len(s.block_table)) for s in seqs]
        return torch.tensor(rows, dtype=torch.int32, device=self.device).view(len(seqs), width)
