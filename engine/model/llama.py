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
from engine.model.attention import AttentionMetadata, AttentionWeights, paged_attention
from engine.model.config import ModelConfig
from engine.model.layers import GatedMLP, RMSNorm, RotaryEmbedding
from engine.model.linear import ProjLinear
import kernels
from kernels import cpu_int4
from kernels.embedding import resolve_ids
from kernels.quant import QuantWeight, dequantize, quantize


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.num_heads, self.num_kv_heads, self.head_dim = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        self.q_size = self.num_heads * self.head_dim
        self.kv_size = self.num_kv_heads * self.head_dim
        self.scale = self.head_dim ** -0.5
        self.eps = cfg.rms_norm_eps
        self.qkv_proj = ProjLinear(cfg.hidden_size, self.q_size + 2 * self.kv_size, bias=cfg.qkv_bias)
        self.o_proj = ProjLinear(self.q_size, cfg.hidden_size)
        self.qk_norm = cfg.qk_norm
        if cfg.qk_norm:
            self.q_norm = RMSNorm(self.head_dim, cfg.rms_norm_eps)
            self.k_norm = RMSNorm(self.head_dim, cfg.rms_norm_eps)
        self.k_cache = self.v_cache = torch.empty(0)
        self.kv_factors = (1.0, 1.0)  # K and V as stored = f * K, f * V (engine/kv_scales.py)
        self._weights: AttentionWeights | None = None

    def forward(self, x: torch.Tensor, rope: RotaryEmbedding, meta: AttentionMetadata) -> torch.Tensor:
        if self._weights is None or self._weights.cos is not rope.cos:
            self._weights = AttentionWeights(
                self.num_heads, self.num_kv_heads, self.head_dim, self.scale / self.kv_factors[0], rope.cos,
                rope.sin, self.q_norm.weight if self.qk_norm else None, self.k_norm.weight if self.qk_norm else None,
                self.eps)
        o = paged_attention(self.qkv_proj(x), self.k_cache, self.v_cache, meta, self._weights)
        if self.kv_factors[1] != 1.0:
            o.mul_(1.0 / self.kv_factors[1])
        return self.o_proj(o.view(x.shape[0], self.q_size))


class DecoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.self_attn = Attention(cfg)
        self.mlp = GatedMLP(cfg.hidden_size, cfg.intermediate_size)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None, rope: RotaryEmbedding,
                meta: AttentionMetadata) -> tuple[torch.Tensor, torch.Tensor]:
        """x: the previous layer's output (the embedding, first); residual: the stream before it.
        The residual add of each sublayer happens in the norm after it."""
        h, residual = self.input_layernorm(x, residual)
        h, residual = self.post_attention_layernorm(self.self_attn(h, rope, meta), residual)
        return self.mlp(h), residual


class TokenEmbedding(nn.Module):
    """The token embedding, dense or quantized; a tied lm_head multiplies by the same weight."""

    def __init__(self, vocab: int, hidden: int) -> None:
        super().__init__()
        self.vocab, self.hidden = vocab, hidden
        self.weight: nn.Parameter | None = None
        self.quant: QuantWeight | None = None
        self.dtype = torch.float32

    def set_dense(self, weight: torch.Tensor) -> None:
        self.weight = nn.Parameter(weight, requires_grad=False)

    def forward(self, host_ids: torch.Tensor, src_rows: torch.Tensor, last_token: torch.Tensor) -> torch.Tensor:
        if self.quant is None:
            return kernels.embed_tokens(self.weight, host_ids, src_rows, last_token)
        return kernels.quant_embedding(resolve_ids(host_ids, src_rows, last_token), self.quant, self.dtype)

    def as_lm_head(self, x: torch.Tensor) -> torch.Tensor:
        if self.quant is None:
            return nn.functional.linear(x, self.weight)
        return kernels.quant_matmul(x, self.quant)



class LlamaForCausalLM(nn.Module):
    # HF checkpoint name fragment -> (our fused projection, shard index)
    packed = {"q_proj": ("qkv_proj", 0), "k_proj": ("qkv_proj", 1), "v_proj": ("qkv_proj", 2),
              "gate_proj": ("gate_up_proj", 0), "up_proj": ("gate_up_proj", 1)}

    def __init__(self, cfg: ModelConfig, max_positions: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed_tokens = TokenEmbedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.num_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.rope = RotaryEmbedding(cfg, max_positions)
        self.lm_head = None if cfg.tie_word_embeddings else ProjLinear(cfg.hidden_size, cfg.vocab_size)

    def forward(self, host_ids: torch.Tensor, src_rows: torch.Tensor, last_token: torch.Tensor,
                meta: AttentionMetadata) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids come from `host_ids`, or, where `src_rows >= 0`, from the sampler's
        `last_token` of that row (see kernels.embed_tokens). Returns (last layer's output, the
        residual stream before it): `compute_logits` adds and normalises them."""
        x = self.embed_tokens(host_ids, src_rows, last_token)
        residual = None
        for layer in self.layers:
            x, residual = layer(x, residual, self.rope, meta)
        return x, residual

    def compute_logits(self, hidden: torch.Tensor, residual: torch.Tensor,
                       rows: torch.Tensor | None = None) -> torch.Tensor:
        """Final add, norm and lm_head on the selected rows only: one row per sequence, not per token."""
        normed, _ = self.norm(hidden, residual, rows)
        return self.embed_tokens.as_lm_head(normed) if self.lm_head is None else self.lm_head(normed)

    def bind_kv_cache(self, k_caches: list[torch.Tensor], v_caches: list[torch.Tensor]) -> None:
        for layer, k, v in zip(self.layers, k_caches, v_caches):
            layer.self_attn.k_cache, layer.self_attn.v_cache = k, v

    def weight_bytes(self) -> int:
        """Bytes of every weight as held (packed ones as packed), the CPU's int4 copies included."""
        return sum(self.weight_formats().values()) + self.int4_decode_bytes()

    def int4_decode_bytes(self) -> int:
        """Bytes of the 4-bit copies the CPU decodes from (kernels/cpu_int4.py), beside the weights."""
        return sum(m.int4.nbytes for m in self.modules() if isinstance(m, ProjLinear) and m.int4 is not None)

    def weight_formats(self) -> dict[str, int]:
        """Bytes held per storage format ("Q4_K", "Q6_K", "bfloat16", ...): what Settings shows."""
        formats: dict[str, int] = {}
        for p in self.parameters():
            name = str(p.dtype).removeprefix("torch.")
            formats[name] = formats.get(name, 0) + p.numel() * p.element_size()
        packed = [s.weight for m in self.modules() if isinstance(m, ProjLinear) for s in m.segments]
        for w in packed + ([self.embed_tokens.quant] if self.embed_tokens.quant is not None else []):
            formats[w.qtype] = formats.get(w.qtype, 0) + w.nbytes
        return formats

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor | QuantWeight]], device: torch.device,
                     dtype: torch.dtype, quantization: str | None = None, dense: bool = False,
                     int4_decode: bool = False) -> None:
        """Take HF-named tensors in (dense tensors or packed QuantWeights), fusing q/k/v and
        gate/up; complain about anything unexpected, misshapen or missing.

        Packed weights stay packed unless `dense` (then they are dequantized, exactly, and cast).
        Dense projection weights are quantized with `quantization` ("int8" -> Q8_0, "int4" ->
        Q4_1; the embedding and lm_head take Q8_0 either way, as they matter most).
        `int4_decode` (CPU, bf16): projections whose parts are all 4-bit also keep them in
        torch's int4 form for decode steps (kernels/cpu_int4.py)."""
        params = dict(self.named_parameters())
        projections = {n: m for n, m in self.named_modules() if isinstance(m, ProjLinear)}
        parts: dict[str, dict[int, torch.Tensor | QuantWeight]] = {}
        int4_parts: dict[str, dict[int, QuantWeight]] = {}  # packed parts read so far, for cpu_int4
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
            module_name = name.removesuffix(".weight")
            if name == "embed_tokens.weight" or (module_name in projections and name.endswith(".weight")):
                value = self._prepared(name, tensor, device, dtype, quantization, dense, shard)
                packed = tensor if isinstance(tensor, QuantWeight) else value  # the file's, or made at load
                if int4_decode and isinstance(packed, QuantWeight) and name != "embed_tokens.weight":
                    got = int4_parts.setdefault(module_name, {})
                    got[0 if shard is None else shard] = packed
                    if len(got) == _part_count(module_name):  # packed now: the file's parts are freed as read
                        projections[module_name].set_int4(cpu_int4.pack([got[i] for i in range(len(got))]))
                        del int4_parts[module_name]
                if name == "embed_tokens.weight":
                    self._set_embedding(value, dtype)
                else:
                    parts.setdefault(module_name, {})[0 if shard is None else shard] = value
                loaded.add(name if shard is None else f"{name}#{shard}")
                continue
            param = params.get(name)
            if param is None:
                raise ModelLoadError(f"unexpected weight {name!r} in the checkpoint")
            self._check(name, tensor, self._shard(param.data, name, shard).shape if shard is not None
                        else param.shape)
            target = param.data if shard is None else self._shard(param.data, name, shard)
            target.copy_(tensor)
            loaded.add(name if shard is None else f"{name}#{shard}")
        for module_name, shards in parts.items():
            module = projections[module_name]
            count = _part_count(module_name)
            if len(shards) == count:
                ordered = [shards[i] for i in range(count)]
                if all(isinstance(v, QuantWeight) for v in ordered):
                    module.set_quantized(ordered, device)
                else:  # mixed: dense throughout
                    module.set_dense(torch.cat([v if isinstance(v, torch.Tensor) else
                                                dequantize(v).to(device=device, dtype=dtype) for v in ordered]))
        expected = {n for n in params if not n.endswith(("qkv_proj.bias",))}
        expected |= {f"{n}#{i}" for n in params if n.endswith("qkv_proj.bias") for i in range(3)}
        for module_name in projections:
            if module_name == "lm_head" and self.lm_head is None:
                continue
            if module_name.endswith("qkv_proj"):
                expected |= {f"{module_name}.weight#{i}" for i in range(3)}
            elif module_name.endswith("gate_up_proj"):
                expected |= {f"{module_name}.weight#{i}" for i in range(2)}
            else:
                expected.add(f"{module_name}.weight")
        expected.add("embed_tokens.weight")
        missing = sorted(expected - loaded)
        if missing:
            raise ModelLoadError(f"the checkpoint is missing {len(missing)} weights, e.g. {missing[:3]}")

    def _prepared(self, name: str, tensor: torch.Tensor | QuantWeight, device: torch.device, dtype: torch.dtype,
                  quantization: str | None, dense: bool, shard: int | None) -> torch.Tensor | QuantWeight:
        """A projection or embedding weight, checked, on the device, in the form it will be used."""
        expected = self._weight_shape(name, shard)
        if isinstance(tensor, QuantWeight):
            if tuple(tensor.shape) != expected:
                raise ModelLoadError(f"weight {name!r} has shape {tuple(tensor.shape)}, expected {expected}")
            if dense:
                return dequantize(tensor).to(device=device, dtype=dtype)
            # a part of a fused projection stays where it was read until its parts are joined, so
            # the join leaves no freed parts behind in device memory (holes the KV pool cannot use)
            return tensor if shard is not None else tensor.to(device)
        self._check(name, tensor, expected)
        tensor = tensor.to(device)
        if quantization is not None:
            target = "Q4_1" if quantization == "int4" and "embed" not in name and "lm_head" not in name else "Q8_0"
            return quantize(tensor, target)
        return tensor.to(dtype)

    def _set_embedding(self, value: torch.Tensor | QuantWeight, dtype: torch.dtype) -> None:
        self.embed_tokens.dtype = dtype
        if isinstance(value, QuantWeight):
            self.embed_tokens.quant = value
        else:
            self.embed_tokens.set_dense(value)

    def _weight_shape(self, name: str, shard: int | None) -> tuple[int, int]:
        c = self.cfg
        if name == "embed_tokens.weight" or name == "lm_head.weight":
            return c.vocab_size, c.hidden_size
        if shard is not None:
            rows = self._sizes(name)[shard]
            return rows, c.hidden_size
        if name.endswith("o_proj.weight"):
            return c.hidden_size, c.num_heads * c.head_dim
        return c.hidden_size, c.intermediate_size  # down_proj

    @staticmethod
    def _check(name: str, tensor: torch.Tensor, shape) -> None:
        if not tensor.is_floating_point():
            raise ModelLoadError(f"weight {name!r} has dtype {tensor.dtype}, expected floating point")
        if tuple(tensor.shape) != tuple(shape):
            raise ModelLoadError(f"weight {name!r} has shape {tuple(tensor.shape)}, expected {tuple(shape)}")

    def _sizes(self, name: str) -> list[int]:
        c = self.cfg
        if "qkv_proj" in name:
            return [c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim, c.num_kv_heads * c.head_dim]
        return [c.intermediate_size, c.intermediate_size]

    def _shard(self, fused: torch.Tensor, name: str, index: int) -> torch.Tensor:
        sizes = self._sizes(name)
        return fused.narrow(0, sum(sizes[:index]), sizes[index])


def _part_count(projection: str) -> int:
    """How many checkpoint tensors a fused projection is made of."""
    return 3 if projection.endswith("qkv_proj") else 2 if projection.endswith("gate_up_proj") else 1
