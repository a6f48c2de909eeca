"""A fused dequantize-and-multiply GPTQ kernel in Triton: y = x Wᵀ with W read as packed 4-bit codes.

One program computes a [BLOCK_M, BLOCK_N] tile of y. It walks the input dimension in steps of BLOCK_K and,
for each step, loads the x tile and the int32 words of qweight that hold the tile's codes (eight input
channels per word), then unpacks and dequantizes them in registers:

    code = (word >> 4·(k mod 8)) & 0xF          g = g_idx[k]
    zero = ((qzeros[g, n / 8] >> 4·(n mod 8)) & 0xF) + ZERO_OFFSET      (1 in the v1 format)
    w[k, n] = (code - zero) · scales[g, n]

and accumulates tl.dot(x, w) in float32. The full-precision weight never exists in memory: per weight,
global memory sees half a byte plus a share of its group's scale and zero, which is where 4-bit decode gains
its speed. `g_idx` is read per input channel, so act-order checkpoints (scattered groups) need no
special case; the price is a gather of scales and zeros per tile row.

Tested on CPU under `TRITON_INTERPRET=1` (m7_gptq/tests/test_kernels.py); natively on CUDA.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _gptq_matmul_kernel(
    x_ptr, qweight_ptr, scales_ptr, qzeros_ptr, g_idx_ptr, out_ptr, bias_ptr,
    M, N, K,
    stride_xm, stride_qk, stride_sg, stride_zg, stride_om,  # x [M, K], qweight [K/8, N], scales/qzeros [G, .], out [M, N]
    BITS: tl.constexpr, ZERO_OFFSET: tl.constexpr, HAS_BIAS: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    PER_WORD: tl.constexpr = 32 // BITS
    MASK: tl.constexpr = (1 << BITS) - 1
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    m_ok, n_ok = offs_m < M, offs_n < N
    zero_shift = (offs_n % PER_WORD) * BITS  # where output n's zero point sits in its qzeros word
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        k_ok = offs_k < K
        x = tl.load(x_ptr + offs_m[:, None] * stride_xm + offs_k[None, :], mask=m_ok[:, None] & k_ok[None, :], other=0.0)
        kn_ok = k_ok[:, None] & n_ok[None, :]
        words = tl.load(qweight_ptr + (offs_k // PER_WORD)[:, None] * stride_qk + offs_n[None, :], mask=kn_ok, other=0)
        codes = (words >> ((offs_k % PER_WORD) * BITS)[:, None]) & MASK  # [BLOCK_K, BLOCK_N]
        g = tl.load(g_idx_ptr + offs_k, mask=k_ok, other=0)
        scales = tl.load(scales_ptr + g[:, None] * stride_sg + offs_n[None, :], mask=kn_ok, other=0.0)
        zwords = tl.load(qzeros_ptr + g[:, None] * stride_zg + (offs_n // PER_WORD)[None, :], mask=kn_ok, other=0)
        zeros = ((zwords >> zero_shift[None, :]) & MASK) + ZERO_OFFSET
        w = ((codes - zeros).to(tl.float32) * scales.to(tl.float32)).to(x.dtype)  # dequantized in registers
        acc += tl.dot(x, w, input_precision=PRECISION)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + offs_n, mask=n_ok, other=0.0).to(tl.float32)[None, :]
    tl.store(out_ptr + offs_m[:, None] * stride_om + offs_n[None, :], acc.to(out_ptr.dtype.element_ty),
             mask=m_ok[:, None] & n_ok[None, :])


def gptq_matmul(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, qzeros: torch.Tensor,
                g_idx: torch.Tensor, bits: int, zero_offset: int, bias: torch.Tensor | None = None) -> torch.Tensor:
    """x [M, K] (float32/16, bfloat16) times the GPTQ weight -> [M, N] in x's dtype."""
    m, k = x.shape
    n = qweight.shape[1]
    x = x.contiguous()
    out = torch.empty(m, n, dtype=x.dtype, device=x.device)
    block_m = 16 if m <= 16 else 32 if m <= 32 else 64  # tl.dot needs at least 16 rows; decode pads 1 -> 16
    block_n, block_k = 64, 64
    grid = (triton.cdiv(m, block_m), triton.cdiv(n, block_n))
    _gptq_matmul_kernel[grid](
        x, qweight, scales, qzeros, g_idx, out, bias if bias is not None else out,
        m, n, k, x.stride(0), qweight.stride(0), scales.stride(0), qzeros.stride(0), out.stride(0),
        BITS=bits, ZERO_OFFSET=zero_offset, HAS_BIAS=bias is not None,
        PRECISION="ieee" if x.dtype == torch.float32 else "tf32",  # fp32 stays fp32 (tf32 would cost 3 digits)
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k,
    )
    return out
