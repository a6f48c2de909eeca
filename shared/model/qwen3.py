"""Qwen3 (and Qwen2) in plain PyTorch, written once for every milestone.

The model works on a flat batch of tokens: `input_ids[T]` and `positions[T]`, with the sequences of the
batch laid end to end. It never sees a KV cache: each attention layer calls
`backend.forward(q, k, v, layer_idx, metadata)` and the milestone's backend does the rest. Parameter
names equal HuggingFace's (`model.layers.0.self_attn.q_proj.weight`, ...) so checkpoints load as-is.
"""

from __future__ import annotations

import torch
from torch import nn

from shared.attention import AttentionBackend, AttentionMetadata
from shared.config import ModelConfig
from shared.model.layers import MLP, LinearFactory, RMSNorm, RotaryEmbedding, make_linear


class Attention(nn.Module):
    def __init__(self, config: ModelConfig, layer_idx: int, linear_factory: LinearFactory = make_linear) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.n_heads, self.n_kv_heads, self.head_dim = (
            config.num_attention_heads, config.num_key_value_heads, config.head_dim)
        h, bias = config.hidden_size, config.attention_bias
        self.q_proj = linear_factory(h, config.q_size, bias)
        self.k_proj = linear_factory(h, config.kv_size, bias)
        self.v_proj = linear_factory(h, config.kv_size, bias)
        self.o_proj = linear_factory(config.q_size, h, False)
        if config.qk_norm:  # Qwen3: RMSNorm over each head's vector before RoPE
            self.q_norm = RMSNorm(self.head_dim, config.rms_norm_eps)
            self.k_norm = RMSNorm(self.head_dim, config.rms_norm_eps)
        self.qk_norm = config.qk_norm

    def forward(self, x: torch.Tensor, positions: torch.Tensor, rope: RotaryEmbedding,
                backend: AttentionBackend, metadata: AttentionMetadata) -> torch.Tensor:
        t = x.shape[0]
        q = self.q_proj(x).view(t, self.n_heads, self.head_dim)  # [T, nh, d]
        k = self.k_proj(x).view(t, self.n_kv_heads, self.head_dim)  # [T, nkv, d]
        v = self.v_proj(x).view(t, self.n_kv_heads, self.head_dim)
        if self.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = rope(positions, q, k)
        out = backend.forward(q, k, v, self.layer_idx, metadata)  # [T, nh, d]
        return self.o_proj(out.reshape(t, self.n_heads * self.head_dim))


class DecoderLayer(nn.Module):
    def __init__(self, config: ModelConfig, layer_idx: int, linear_factory: LinearFactory = make_linear) -> None:
        super().__init__()
        self.self_attn = Attention(config, layer_idx, linear_factory)
        self.mlp = MLP(config.hidden_size, config.intermediate_size, linear_factory)
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(self, x, positions, rope, backend, metadata):
        x = x + self.self_attn(self.input_layernorm(x), positions, rope, backend, metadata)
        return x + self.mlp(self.post_attention_layernorm(x))


class Qwen3Model(nn.Module):
    def __init__(self, config: ModelConfig, linear_factory: LinearFactory = make_linear) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(config, i, linear_factory) for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.rotary_emb = RotaryEmbedding(config.head_dim, config.max_position_embeddings, config.rope_theta)

    def forward(self, input_ids, positions, backend, metadata) -> torch.Tensor:
        x = self.embed_tokens(input_ids)  # [T, hidden]
        for layer in self.layers:
            x = layer(x, positions, self.rotary_emb, backend, metadata)
        return self.norm(x)


class Qwen3ForCausalLM(nn.Module):
    """The causal LM. `linear_factory(in_features, out_features, bias)` builds every projection of the decoder
    layers (m7 passes a GPTQ 4-bit linear); the lm_head stays a plain linear, as GPTQ checkpoints keep it."""

    def __init__(self, config: ModelConfig, linear_factory: LinearFactory = make_linear) -> None:
        super().__init__()
        self.config = config
        self.model = Qwen3Model(config, linear_factory)
        self.lm_head = make_linear(config.hidden_size, config.vocab_size)
        self.tie_weights()

    def tie_weights(self) -> None:
        if self.config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor,
                backend: AttentionBackend, metadata: AttentionMetadata) -> torch.Tensor:
        """input_ids, positions: [T] -> final hidden states [T, hidden]."""
        return self.model(input_ids, positions, backend, metadata)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden: [N, hidden] -> logits [N, vocab] in float32 (only the rows that are sampled)."""
        return self.lm_head(hidden).float()
