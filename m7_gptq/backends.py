"""M4's attention backends. Each first writes the step's new K/V into the paged cache by slot mapping,
then computes attention for the varlen batch that `FlashMetadata` describes (see attention.py).

The first two gather each sequence's K/V out of the blocks into contiguous tensors (a copy), then attend:
`naive` with the textbook formula, `sdpa` with PyTorch's fused kernel. The last two read K/V in place
through the block table: `triton` with the project's own kernel, `flash-attn` with the library's.
"""

from __future__ import annotations

import math

import torch

from m7_gptq.attention import FlashMetadata
from shared.attention import AttentionBackend, causal_attention


def naive_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(QKᵀ/√d + causal mask)·V for one sequence, in float32, the scores materialised.

    q: [Tq, n_heads, d], the last Tq of the sequence's positions; k, v: [Tk, n_kv_heads, d], positions
    0 .. Tk-1. Query j sits at position Tk - Tq + j and sees keys 0 .. Tk - Tq + j (bottom-right causal).
    K and V are repeated for GQA, as the textbook (and HF's eager attention) does.
    """
    tq, tk, group = q.shape[0], k.shape[0], q.shape[1] // k.shape[1]
    qf = q.float().transpose(0, 1)  # [H, Tq, d]
    kf = k.float().repeat_interleave(group, dim=1).transpose(0, 1)  # [H, Tk, d]
    vf = v.float().repeat_interleave(group, dim=1).transpose(0, 1)
    scores = qf @ kf.transpose(1, 2) / math.sqrt(q.shape[-1])  # [H, Tq, Tk]: the matrix flash attention never builds
    future = torch.arange(tk, device=q.device)[None, :] > torch.arange(tk - tq, tk, device=q.device)[:, None]
    scores = scores.masked_fill(future, float("-inf"))
    return (scores.softmax(dim=-1) @ vf).transpose(0, 1).to(q.dtype)  # [Tq, H, d]


class GatherBackend(AttentionBackend):
    """Write the new K/V, copy every sequence's positions out of the blocks, then attend sequence by sequence."""

    @staticmethod
    def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """One sequence: q [Tq, H, d], its last Tq positions; k, v [Tk, H_kv, d], all of them -> [Tq, H, d]."""
        raise NotImplementedError

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layer_idx: int, metadata: FlashMetadata) -> torch.Tensor:
        md = metadata
        md.kv_cache.write(layer_idx, md.slot_mapping, k, v)
        keys, values = md.gather(layer_idx)
        out = torch.empty_like(q)
        cu_q, cu_k = md.cu_seqlens_q_cpu, md.cu_seqlens_k_cpu
        for i in range(md.num_seqs):
            rows, cols = slice(cu_q[i], cu_q[i + 1]), slice(cu_k[i], cu_k[i + 1])
            out[rows] = self.attend(q[rows], keys[cols], values[cols])
        return out


class NaiveBackend(GatherBackend):
    """The textbook formula per sequence, the scores materialised: the baseline the lesson measures against."""

    name = "naive"
    attend = staticmethod(naive_attention)


class SdpaBackend(GatherBackend):
    """PyTorch's fused `scaled_dot_product_attention` per sequence (on CPU, ATen's flash kernel). Decodes take the
    same path: measured on 2 CPU cores, one padded SDPA call for all decodes was slower than one call each
    (the padding is copied and masked; docs/dev/milestone_4.md)."""

    name = "sdpa"

    @staticmethod
    def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return causal_attention(q, k, v, q_start=k.shape[0] - q.shape[0])


class TritonBackend(AttentionBackend):
    """The project's FlashAttention-2-style kernel: every sequence of the step in one launch, K/V read in place."""

    name = "triton"

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layer_idx: int, metadata: FlashMetadata) -> torch.Tensor:
        from m7_gptq.flash_attention_kernel import flash_attention

        md = metadata
        md.kv_cache.write(layer_idx, md.slot_mapping, k, v)
        return flash_attention(q, md.kv_cache.k[layer_idx], md.kv_cache.v[layer_idx], md)


class FlashAttnBackend(AttentionBackend):
    """flash-attn 2's `flash_attn_varlen_func` over the paged cache (its `block_table` argument), written against
    the library's documented API: q [T, H, d]; k/v caches [num_blocks, block_size, H_kv, d] with block_size a
    multiple of 256; `cu_seqlens_k` the cumulative seq_lens; causal aligned to the bottom right."""

    name = "flash-attn"

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layer_idx: int, metadata: FlashMetadata) -> torch.Tensor:
        from flash_attn import flash_attn_varlen_func

        md = metadata
        md.kv_cache.write(layer_idx, md.slot_mapping, k, v)
        return flash_attn_varlen_func(
            q, md.kv_cache.k[layer_idx], md.kv_cache.v[layer_idx], md.cu_seqlens_q, md.cu_seqlens_k, md.max_seqlen_q,
            md.max_seqlen_k, softmax_scale=1.0 / math.sqrt(q.shape[-1]), causal=True, block_table=md.block_table)


BACKEND_CLASSES: dict[str, type[AttentionBackend]] = {
    "naive": NaiveBackend, "sdpa": SdpaBackend, "triton": TritonBackend, "flash-attn": FlashAttnBackend}
