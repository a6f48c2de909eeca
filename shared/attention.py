"""The seam between the shared model and a milestone's attention: `AttentionBackend.forward(q, k, v, layer_idx, metadata)`.

The model computes q, k, v for a flat batch of tokens and hands them to the backend with the step's
metadata. The backend owns everything about the KV cache: where new K/V are written, which past K/V
each query reads, and how attention is computed (naive -> paged -> flash across the milestones).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class AttentionMetadata:
    """What every backend receives for one forward pass; each milestone subclasses it with its own fields
    (positions, slots, block tables, ...)."""


class AttentionBackend(ABC):
    """Computes attention for one layer and keeps that layer's KV cache up to date."""

    name: str = "base"

    @abstractmethod
    def forward(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layer_idx: int, metadata: AttentionMetadata
    ) -> torch.Tensor:
        """q: [T, n_heads, head_dim], k/v: [T, n_kv_heads, head_dim] (the new tokens) -> [T, n_heads, head_dim]."""


def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, q_start: int) -> torch.Tensor:
    """Attention of one sequence's new queries over all its keys, causal, with GQA.

    q: [Tq, n_heads, d] at absolute positions q_start .. q_start+Tq-1; k, v: [Tk, n_kv_heads, d] at
    positions 0 .. Tk-1 (so Tk = q_start + Tq). Query i sees keys 0 .. q_start+i. Returns [Tq, n_heads, d].
    """
    tq, tk = q.shape[0], k.shape[0]
    q, k, v = q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1)  # [heads, T, d]
    if tq == 1:
        mask = None  # a single new query sees every key
    elif q_start == 0 and tq == tk:
        mask = None
    else:
        pos_q = torch.arange(q_start, q_start + tq, device=q.device)[:, None]
        mask = pos_q >= torch.arange(tk, device=q.device)[None, :]  # [Tq, Tk], True = may attend
    # 4-D inputs ([batch 1, heads, T, d]): with 3-D ones PyTorch's CPU dispatcher skips its flash kernel for the
    # math fallback, which materialises the [heads, Tq, Tk] scores (5x slower at 2K tokens, 15 s at 7.9K)
    out = F.scaled_dot_product_attention(
        q[None], k[None], v[None], attn_mask=mask, is_causal=mask is None and tq > 1, scale=1.0 / math.sqrt(q.shape[-1]),
        enable_gqa=q.shape[0] != k.shape[0],
    )
    return out[0].transpose(0, 1)  # [Tq, heads, d]


def decode_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Attention of one sequence's single newest query over all its keys (no mask needed), with GQA.

    q: [n_heads, d]; k, v: [Tk, n_kv_heads, d]. Returns [n_heads, d]. Two small matmuls: at this size an
    SDPA call costs more in dispatch than in arithmetic. Query heads are grouped under their KV head with
    a view, so K and V are never repeated.
    """
    n_kv, d = k.shape[1], k.shape[2]
    qg = q.view(n_kv, -1, d)  # [kv_heads, group, d]
    scores = torch.matmul(qg, k.permute(1, 2, 0)) * (1.0 / math.sqrt(d))  # [kv_heads, group, Tk]
    return torch.matmul(scores.softmax(dim=-1), v.transpose(0, 1)).view(-1, d)  # [n_heads, d]


class WholeSequenceAttention(AttentionBackend):
    """Causal attention over one whole sequence per forward pass, without a KV cache: the model is called on
    one sequence at a time (positions 0 .. T-1), so q, k and v are all of it. For offline passes that never
    decode: perplexity, and M7's layer-by-layer calibration."""

    name = "whole-sequence"

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layer_idx: int,
                metadata: AttentionMetadata) -> torch.Tensor:
        return causal_attention(q, k, v, q_start=0)
