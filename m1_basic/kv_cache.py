"""M1's KV cache: one contiguous buffer per layer for the single running request.

The buffer is sized for exactly what the request can ever need (prompt + max_tokens, capped by the
model's context), and every write goes through `write` — the one write path (gpt-fast's KVCache.update).
Memory per request = 2 (K and V) x layers x positions x kv_heads x head_dim x dtype bytes.
"""

from __future__ import annotations

import torch

from shared.config import ModelConfig


class ContiguousKVCache:
    def __init__(self, config: ModelConfig, max_len: int, dtype: torch.dtype, device: str | torch.device) -> None:
        shape = (config.num_hidden_layers, max_len, config.num_key_value_heads, config.head_dim)
        self.k = torch.empty(shape, dtype=dtype, device=device)  # [layers, max_len, kv_heads, head_dim]
        self.v = torch.empty(shape, dtype=dtype, device=device)
        self.max_len = max_len

    @property
    def nbytes(self) -> int:
        return self.k.nbytes + self.v.nbytes

    def write(self, layer: int, start: int, k: torch.Tensor, v: torch.Tensor) -> None:
        """Store K/V of positions start .. start+T-1 (k, v: [T, kv_heads, head_dim])."""
        end = start + k.shape[0]
        if end > self.max_len:
            raise RuntimeError(f"KV cache overflow: position {end - 1} but the cache holds {self.max_len}")
        self.k[layer, start:end] = k
        self.v[layer, start:end] = v

    def read(self, layer: int, end: int) -> tuple[torch.Tensor, torch.Tensor]:
        """K/V of positions 0 .. end-1: views, no copy."""
        return self.k[layer, :end], self.v[layer, :end]
