"""A FlashAttention-2-style kernel in Triton over the paged KV cache: every sequence of a step in one launch.

One program computes a tile of `BLOCK_Q` queries of one sequence for one KV head, together with the
`GROUP` query heads that share that KV head (GQA): the tile's rows are (query, head) pairs, so K and V
are loaded once for the whole group and never repeated. The program walks the sequence's keys in tiles
of `BLOCK_N` positions, reading each position in place through the block table, and keeps FlashAttention's
online softmax per row: a running maximum `m`, a running sum `denom` and an unnormalised output `acc`, each
rescaled by exp(m_old - m_new) whenever the maximum grows. The two products are `tl.dot`s (tensor cores on
a GPU). Scores never leave the program: no [T, T] matrix is ever written to memory.

Causality with a context offset: a sequence with `seq_len` positions and `q_len` new tokens has
`context = seq_len - q_len` cached positions, and new token j sits at position context + j, seeing keys
0 .. context + j. So a fresh prompt (context 0), a decode (q_len 1) and a prefill that continues a cached
sequence are one code path. A tile stops at the last key its last query can see.

Decode is the q_len = 1 case of the same kernel. The split-KV (FlashDecoding) variant was not written:
see docs/dev/milestone_4.md for why, and how the GPU check decides it.

Tested on CPU under `TRITON_INTERPRET=1` (tests/kept/flash.py, run by every engine from M4 on); natively on CUDA.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from m7_gptq.attention import FlashMetadata

LOG2E = 1.4426950408889634  # the kernel works in base 2: exp(x) = exp2(x * log2(e)), and exp2 is the cheaper instruction


@triton.jit
def _flash_attention_kernel(
    q_ptr, k_cache_ptr, v_cache_ptr, out_ptr,
    cu_seqlens_q_ptr, seq_lens_ptr, block_table_ptr, tile_seq_ptr, tile_start_ptr,
    scale_log2,  # softmax scale * log2(e)
    stride_qt, stride_qh, stride_ot, stride_oh,  # q, out: [T, H, D]
    stride_kb, stride_kt, stride_kh,  # k/v cache: [num_blocks, BLOCK_SIZE, KV_HEADS, D]
    stride_bt,  # block table: [S, max_blocks]
    GROUP: tl.constexpr, GROUP_P: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_SIZE: tl.constexpr, HEAD_DIM: tl.constexpr, HEAD_DIM_P: tl.constexpr, PRECISION: tl.constexpr,
):
    tile = tl.program_id(0)
    kv_head = tl.program_id(1)
    seq = tl.load(tile_seq_ptr + tile)
    q_first = tl.load(tile_start_ptr + tile)  # this tile's first query, counted within the sequence's new tokens
    q_begin = tl.load(cu_seqlens_q_ptr + seq)
    q_len = tl.load(cu_seqlens_q_ptr + seq + 1) - q_begin
    seq_len = tl.load(seq_lens_ptr + seq)
    context = seq_len - q_len  # cached positions before the first new token

    # rows: BLOCK_Q queries x GROUP_P heads (the group padded to a power of two)
    r = tl.arange(0, BLOCK_Q * GROUP_P)
    qi = q_first + r // GROUP_P
    g = r % GROUP_P
    row_ok = (qi < q_len) & (g < GROUP)
    d = tl.arange(0, HEAD_DIM_P)
    d_ok = d < HEAD_DIM
    q = tl.load(q_ptr + (q_begin + qi)[:, None] * stride_qt + (kv_head * GROUP + g)[:, None] * stride_qh + d[None, :],
                mask=row_ok[:, None] & d_ok[None, :], other=0.0)  # [M, D]
    q_pos = context + qi  # absolute position of each row's query

    m = tl.full([BLOCK_Q * GROUP_P], float("-inf"), tl.float32)
    denom = tl.zeros([BLOCK_Q * GROUP_P], tl.float32)
    acc = tl.zeros([BLOCK_Q * GROUP_P, HEAD_DIM_P], tl.float32)
    kv_end = tl.minimum(seq_len, context + q_first + BLOCK_Q)  # one past the last key this tile's last query sees
    n = tl.arange(0, BLOCK_N)
    for start in range(0, kv_end, BLOCK_N):
        pos = start + n
        pos_ok = pos < kv_end
        block = tl.load(block_table_ptr + seq * stride_bt + pos // BLOCK_SIZE, mask=pos_ok, other=0).to(tl.int64)
        kv_off = block * stride_kb + (pos % BLOCK_SIZE) * stride_kt + kv_head * stride_kh  # [N]: where each key lives
        k = tl.load(k_cache_ptr + kv_off[None, :] + d[:, None], mask=pos_ok[None, :] & d_ok[:, None], other=0.0)  # [D, N]
        s = tl.dot(q, k, input_precision=PRECISION) * scale_log2  # [M, N] scores, base 2
        s = tl.where(pos_ok[None, :] & (pos[None, :] <= q_pos[:, None]), s, float("-inf"))
        # key 0 is visible to every row, so after the first tile every row's maximum is finite: no NaN from -inf - -inf
        m_new = tl.maximum(m, tl.max(s, axis=1))
        alpha = tl.exp2(m - m_new)  # rescales what was summed under the old maximum
        p = tl.exp2(s - m_new[:, None])
        denom = denom * alpha + tl.sum(p, axis=1)
        v = tl.load(v_cache_ptr + kv_off[:, None] + d[None, :], mask=pos_ok[:, None] & d_ok[None, :], other=0.0)  # [N, D]
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
        m = m_new
    out = acc / denom[:, None]
    tl.store(out_ptr + (q_begin + qi)[:, None] * stride_ot + (kv_head * GROUP + g)[:, None] * stride_oh + d[None, :],
             out.to(out_ptr.dtype.element_ty), mask=row_ok[:, None] & d_ok[None, :])


def tile_sizes(group: int, max_seqlen_q: int) -> tuple[int, int]:
    """(BLOCK_Q, BLOCK_N). A tile has BLOCK_Q * group rows: 16 when every sequence decodes (one query each, so
    more rows would be padding; 16 is a tensor-core tile's height, and Triton before 3.x refused `tl.dot` on
    fewer), 64 when some sequence prefills."""
    rows = 16 if max_seqlen_q == 1 else 64
    group_p = triton.next_power_of_2(group)
    return max(1, rows // group_p), 64


def flash_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, md: FlashMetadata) -> torch.Tensor:
    """q: [T, H, d], the step's new tokens end to end; k_cache/v_cache: [num_blocks, block_size, H_kv, d], the new
    tokens' K/V already written. Returns [T, H, d]."""
    num_tokens, n_heads, head_dim = q.shape
    _, block_size, kv_heads, _ = k_cache.shape
    assert n_heads % kv_heads == 0 and q.stride(-1) == 1 and k_cache.is_contiguous() and v_cache.is_contiguous()
    assert k_cache.stride() == v_cache.stride() and head_dim >= 16
    group = n_heads // kv_heads
    block_q, block_n = tile_sizes(group, md.max_seqlen_q)
    tile_seq, tile_start = md.query_tiles(block_q)
    out = torch.empty_like(q)
    if num_tokens == 0:
        return out
    _flash_attention_kernel[(tile_seq.shape[0], kv_heads)](
        q, k_cache, v_cache, out, md.cu_seqlens_q, md.seq_lens, md.block_table, tile_seq, tile_start,
        LOG2E / math.sqrt(head_dim),
        q.stride(0), q.stride(1), out.stride(0), out.stride(1), k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        md.block_table.stride(0),
        GROUP=group, GROUP_P=triton.next_power_of_2(group), BLOCK_Q=block_q, BLOCK_N=block_n, BLOCK_SIZE=block_size,
        HEAD_DIM=head_dim, HEAD_DIM_P=triton.next_power_of_2(head_dim),
        PRECISION="ieee" if q.dtype == torch.float32 else "tf32",  # fp32 stays fp32 (tf32 would cost 3 digits)
    )
    return out
