"""The paged-attention decode kernel in Triton: one query per sequence, K/V read in place through the block table.

One program handles one (sequence, KV head) pair and all the query heads that share that KV head (GQA),
so each K/V block is loaded once for the whole group. It walks the sequence's block table block by
block and keeps an online softmax, as FlashAttention does: a running maximum `m`, a running sum `denom` and
an unnormalised output `acc`, rescaled whenever the maximum grows. So a long context never has to be
materialised, and never copied out of the pool.

Tested on CPU under `TRITON_INTERPRET=1` against the PyTorch reference (m3_paged/tests/test_paged_attention.py).
On CUDA it runs natively. The products are written as broadcast-and-sum rather than `tl.dot`: a decode
has one query row per head, too few for tensor cores, and the kernel is bound by memory reads anyway.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl


@triton.jit
def _paged_decode_kernel(
    q_ptr, k_ptr, v_ptr, block_tables_ptr, context_lens_ptr, out_ptr, scale,
    stride_qs, stride_qh,  # q: [S, H, D]
    stride_kb, stride_kt, stride_kh,  # k/v cache: [num_blocks, BLOCK_SIZE, KV_HEADS, D]
    stride_bts,  # block tables: [S, max_blocks]
    stride_os, stride_oh,  # out: [S, H, D]
    GROUP: tl.constexpr, GROUP_P: tl.constexpr, BLOCK_SIZE: tl.constexpr, HEAD_DIM: tl.constexpr, HEAD_DIM_P: tl.constexpr,
):
    seq = tl.program_id(0)
    kv_head = tl.program_id(1)
    context_len = tl.load(context_lens_ptr + seq)

    g = tl.arange(0, GROUP_P)  # query heads of this KV head (padded to a power of two)
    d = tl.arange(0, HEAD_DIM_P)
    t = tl.arange(0, BLOCK_SIZE)  # positions within a block
    g_ok, d_ok = g < GROUP, d < HEAD_DIM
    heads = kv_head * GROUP + g
    q = tl.load(q_ptr + seq * stride_qs + heads[:, None] * stride_qh + d[None, :],
                mask=g_ok[:, None] & d_ok[None, :], other=0.0).to(tl.float32)  # [G, D]

    m = tl.full([GROUP_P], float("-inf"), tl.float32)  # running max of the scores
    denom = tl.zeros([GROUP_P], tl.float32)  # running sum of exp(score - m)
    acc = tl.zeros([GROUP_P, HEAD_DIM_P], tl.float32)  # running sum of exp(score - m) * v
    for i in range(0, tl.cdiv(context_len, BLOCK_SIZE)):
        block = tl.load(block_tables_ptr + seq * stride_bts + i).to(tl.int64)  # logical block i -> physical block
        t_ok = i * BLOCK_SIZE + t < context_len  # the last block may be partly filled
        offs = block * stride_kb + t[:, None] * stride_kt + kv_head * stride_kh + d[None, :]
        kv_ok = t_ok[:, None] & d_ok[None, :]
        k = tl.load(k_ptr + offs, mask=kv_ok, other=0.0).to(tl.float32)  # [BLOCK_SIZE, D]
        s = tl.sum(q[:, None, :] * k[None, :, :], axis=2) * scale  # [G, BLOCK_SIZE]
        s = tl.where(t_ok[None, :], s, float("-inf"))
        m_new = tl.maximum(m, tl.max(s, axis=1))
        alpha = tl.exp(m - m_new)  # rescales what was summed under the old maximum
        p = tl.exp(s - m_new[:, None])
        denom = denom * alpha + tl.sum(p, axis=1)
        v = tl.load(v_ptr + offs, mask=kv_ok, other=0.0).to(tl.float32)
        acc = acc * alpha[:, None] + tl.sum(p[:, :, None] * v[None, :, :], axis=1)
        m = m_new
    out = acc / denom[:, None]
    tl.store(out_ptr + seq * stride_os + heads[:, None] * stride_oh + d[None, :], out.to(out_ptr.dtype.element_ty),
             mask=g_ok[:, None] & d_ok[None, :])


def paged_decode_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, block_tables: torch.Tensor,
                           context_lens: torch.Tensor) -> torch.Tensor:
    """q: [S, n_heads, d], one query per sequence; k_cache/v_cache: [num_blocks, block_size, kv_heads, d];
    block_tables: [S, max_blocks] int32; context_lens: [S] int32 (>= 1). Returns [S, n_heads, d]."""
    num_seqs, n_heads, head_dim = q.shape
    _, block_size, kv_heads, _ = k_cache.shape
    assert n_heads % kv_heads == 0 and q.stride(-1) == 1 and k_cache.is_contiguous() and v_cache.is_contiguous()
    assert k_cache.stride() == v_cache.stride()
    group = n_heads // kv_heads
    out = torch.empty_like(q)
    _paged_decode_kernel[(num_seqs, kv_heads)](
        q, k_cache, v_cache, block_tables, context_lens, out, 1.0 / math.sqrt(head_dim),
        q.stride(0), q.stride(1), k_cache.stride(0), k_cache.stride(1), k_cache.stride(2), block_tables.stride(0),
        out.stride(0), out.stride(1),
        GROUP=group, GROUP_P=triton.next_power_of_2(group), BLOCK_SIZE=block_size, HEAD_DIM=head_dim,
        HEAD_DIM_P=triton.next_power_of_2(head_dim),
    )
    return out
