"""M1's attention backend: naive attention over a contiguous KV cache, one sequence at a time.

Prefill writes the prompt's K/V at positions 0..P-1 and attends causally; each decode step writes one
position and attends over everything before it. The math is `shared.attention.causal_attention`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from m1_basic.kv_cache import ContiguousKVCache
from shared.attention import AttentionBackend, AttentionMetadata, causal_attention


@dataclass
class NaiveMetadata(AttentionMetadata):
    start_pos: int  # absolute position of the first new token (0 for prefill)
    kv_cache: ContiguousKVCache


class NaiveAttentionBackend(AttentionBackend):
    name = "naive"

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layer_idx: int,
                metadata: NaiveMetadata) -> torch.Tensor:
        cache, start = metadata.kv_cache, metadata.start_pos
        cache.write(layer_idx, start, k, v)
        keys, values = cache.read(layer_idx, start + q.shape[0])  # [start+T, kv_heads, d]
        return causal_attention(q, keys, values, q_start=start)
