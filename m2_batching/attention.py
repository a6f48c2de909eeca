"""M2's attention backend: attention over a flat batch of sequences, each with its own contiguous slot.

The model hands the backend q, k, v for every new token of the step, with the sequences laid end to end
(a "varlen" layout, with no padding). `BatchMetadata` says where each sequence's tokens are in that flat
batch and at which position they start. For each sequence the backend writes its new K/V into its slot
and attends over slot positions 0 .. start+n-1, which hold exactly that sequence's tokens. A query never
sees another sequence's keys, so no cross-sequence mask is needed.

This is Orca's "selective batching": the matmuls run once for the whole flat batch, and only attention
splits per sequence, because each sequence has its own keys. A prefill attends causally. A decode (one
query) takes the cheaper `decode_attention` path. Copying the decode keys into one padded tensor, for a
single batched call, measured slower on CPU: every step re-copies every cached K/V (see the dev log).
M3's block table and M4's kernels read the cache in place.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from m2_batching.kv_cache import Slot
from shared.attention import AttentionBackend, AttentionMetadata, causal_attention, decode_attention


@dataclass
class BatchMetadata(AttentionMetadata):
    slots: list[Slot]  # one per sequence, in batch order
    starts: list[int]  # position of each sequence's first new token (0 for a prefill)
    lens: list[int]  # new tokens of each sequence in this step (1 for a decode)


class BatchedNaiveBackend(AttentionBackend):
    name = "naive-batched"

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layer_idx: int,
                metadata: BatchMetadata) -> torch.Tensor:
        out = torch.empty_like(q)  # [T, n_heads, d]
        offset = 0
        for slot, start, n in zip(metadata.slots, metadata.starts, metadata.lens):
            rows = slice(offset, offset + n)
            slot.write(layer_idx, start, k[rows], v[rows])
            keys, values = slot.read(layer_idx, start + n)  # [start+n, kv_heads, d]
            if n == 1:
                out[offset] = decode_attention(q[offset], keys, values)
            else:
                out[rows] = causal_attention(q[rows], keys, values, q_start=start)
            offset += n
        return out
