"""One implementation of the Llama family over packed variable-length tokens.

Llama and SmolLM as they are; Mistral is Llama without sliding windows; Qwen2 adds a bias to the
qkv projection; Qwen3 normalises q and k per head before RoPE. q/k/v and gate/up are fused, and
the lm_head runs only on the rows whose logits are needed.
"""
from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from engine.errors import ModelLoadError
from engine.model.attention import AttentionMetadata, paged_attention
from engine.model.config import ModelConfig
from engine.model.layers import GatedMLP, RMSNorm, RotaryEmbedding
import kernels


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.num_heads, self.num_kv_heads, self.head_dim = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        self.q_size = self.num_heads * self.head_dim
        self.kv_size = self.num_kv_heads * self.head_dim
        self.scale = self.head_dim ** -0.5
        self.qkv_proj = nn.Linear(cfg.hidden_size, self.q_size + 2 * self.kv_size, bias=cfg.qkv_bias)
        self.o_proj = nn.Linear(self.q_size, cfg.hidden_size, bias=False)
        self.qk_norm = cfg.qk_norm
        if cfg.qk_norm:
            self.q_norm = RMSNorm(self.head_dim, cfg.rms_norm_eps)
            self.k_norm = RMSNorm(self.head_dim, cfg.rms_norm_eps)
        self.k_cache = self.v_cache = torch.empty(0)

    def forward(self, x: torch.Tensor, positions: torch.Tensor, rope: RotaryEmbedding,
                meta: AttentionMetadata) -> torch.Tensor:
        n = x.shape[0]
        q, k, v = self.qkv_proj(x).split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        q = q.view(n, self.num_heads, self.head_dim)
        k = k.view(n, self.num_kv_heads, self.head_dim)
        v = v.view(n, self.num_kv_heads, self.head_dim)
        if self.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = rope(positions, q, k)
        kernels.store_kv(k, v, self.k_cache, self.v_cache, meta.slot_mapping)
        o = paged_attention(q, k, v, self.k_cache, self.v_cache, meta, self.scale)
        return self.o_proj(o.reshape(n, self.q_size))


class DecoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.self_attn = Attention(cfg)
        self.mlp = GatedMLP(cfg.hidden_size, cfg.intermediate_size)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

    def forward(self, x: torch.Tensor, positions: torch.Tensor, rope: RotaryEmbedding,
                meta: AttentionMetadata) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), positions, rope, meta)
        return x + self.mlp(self.post_attention_layernorm(x))


class LlamaForCausalLM(nn.Module):
    # HF checkpoint name fragment -> (our fused parameter, shard index)
    packed = {"q_proj": ("qkv_proj", 0), "k_proj": ("qkv_proj", 1), "v_proj": ("qkv_proj", 2),
              "gate_proj": ("gate_up_proj", 0), "up_proj": ("gate_up_proj", 1)}

    def __init__(self, cfg: ModelConfig, max_positions: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.num_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.rope = RotaryEmbedding(cfg, max_positions)
        self.lm_head = None if cfg.tie_word_embeddings else nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, meta: AttentionMetadata) -> torch.Tensor:
        x = self.embed_tokens(input_ids)
        for layer in self.layers:
            x = layer(x, positions, self.rope, meta)
        return x

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Final norm and lm_head on the selected rows only: one row per sequence, not per token."""
        hidden = self.norm(hidden)
        weight = self.embed_tokens.weight if self.lm_head is None else self.lm_head.weight
        return torch.nn.functional.linear(hidden, weight)

    def bind_kv_cache(self, k_caches: list[torch.Tensor], v_caches: list[torch.Tensor]) -> None:
        for layer, k, v in zip(self.layers, k_caches, v_caches):
            layer.self_attn.k_cache, layer.self_attn.v_cache = k, v

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Copy HF-named tensors in, fusing q/k/v and gate/up; complain about anything missing."""
        params = dict(self.named_parameters())
        loaded: set[str] = set()
        for name, tensor in weights:
            name = name.removeprefix("model.")
            if "rotary_emb" in name:
                continue
            if name == "lm_head.weight" and self.lm_head is None:
                continue  # tied: the embedding serves as lm_head
            shard = None
            for part, (fused, index) in self.packed.items():
                if f".{part}." in name:
                    name, shard = name.replace(part, fused), index
                    break
            param = params.get(name)
            if param is None:
                raise ModelLoadError(f"unexpected weight {name!r} in the checkpoint")
            target = param.data if shard is None else self._shard(param.data, name, shard)
            if not tensor.is_floating_point():
                raise ModelLoadError(f"weight {name!r} has dtype {tensor.dtype}, expected floating point")
            if target.shape != tensor.shape:
                raise ModelLoadError(
                    f"weight {name!r} has shape {tuple(tensor.shape)}, expected {tuple(target.shape)}")
            target.copy_(tensor)
            loaded.add(name if shard is None else f"{name}#{shard}")
        expected = {n for n in params if not n.endswith(("qkv_proj.weight", "qkv_proj.bias", "gate_up_proj.weight"))}
        expected |= {f"{n}#{i}" for n in params if n.endswith(("qkv_proj.weight", "qkv_proj.bias")) for i in range(3)}
        expected |= {f"{n}#{i}" for n in params if n.endswith("gate_up_proj.weight") for i in range(2)}
        missing = sorted(expected - loaded)
        if missing:
            raise ModelLoadError(f"the checkpoint is missing {len(missing)} weights, e.g. {missing[:3]}")

    def _shard(self, fused: torch.Tensor, name: str, index: int) -> torch.Tensor:
        c = self.cfg
        if "qkv_proj" in name:
            sizes = [c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim, c.num_kv_heads * c.head_dim]
        else:
            sizes = [c.intermediate_size, c.intermediate_size]
        return fused.narrow(0, sum(sizes[:index]), sizes[index])
