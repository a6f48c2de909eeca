"""M7's uniform quantizer: a scale and a zero point per output row and group, and round-to-nearest (RTN).

A weight w becomes the integer code q = clamp(round(w / s) + z, 0, 2^b - 1) and is read back as
s * (q - z). The grid spans [min(w), max(w)] of its group, widened to include 0 so that zero stays exact;
symmetric quantization fixes z = 2^(b-1) and centres the grid on 0. Scales are rounded to float16 when they
are chosen, because the checkpoint stores them in float16: the error GPTQ corrects is the error the kernels
will see. RTN quantizes every group like this and stops; GPTQ (gptq.py) uses the same grid per group but
corrects the remaining weights after each column.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class QuantizedWeight:
    """A linear layer's weight [out, in] as integer codes with its grid: what the checkpoint stores, unpacked."""

    codes: torch.Tensor  # [out, in] int32 in 0 .. 2^bits - 1
    scales: torch.Tensor  # [groups, out] float16
    zeros: torch.Tensor  # [groups, out] int32, the true zero points (not the v1 stored ones)
    g_idx: torch.Tensor  # [in] int32: the group of each input channel
    bits: int

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The weight the codes stand for, [out, in]."""
        g = self.g_idx.long()
        scales, zeros = self.scales[g].T.to(dtype), self.zeros[g].T.to(dtype)  # [out, in] each
        return (self.codes.to(dtype) - zeros) * scales


def grid(w: torch.Tensor, bits: int, sym: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and zero point of each row of `w` [rows, n] for a b-bit grid. Returns (scale, zero), [rows] each,
    the scale float32 holding a float16 value, the zero an integer-valued float32."""
    maxq = 2**bits - 1
    w = w.float()
    lo = w.min(dim=1).values.clamp(max=0)  # the grid always contains 0
    hi = w.max(dim=1).values.clamp(min=0)
    if sym:
        hi = torch.maximum(lo.abs(), hi)
        lo = -hi
    empty = (lo == 0) & (hi == 0)  # an all-zero row: any grid works, avoid dividing by 0
    lo, hi = torch.where(empty, -1.0, lo), torch.where(empty, 1.0, hi)
    scale = ((hi - lo) / maxq).half().float()  # the checkpoint's float16 scale, chosen here
    scale = torch.where(scale > 0, scale, torch.finfo(torch.float16).tiny)  # a range below float16's resolution
    # the v1 checkpoint format stores zero - 1 in 4 bits, so a zero point of 0 would be read back as 16:
    # the lowest zero kept is 1 (it differs from 0 only for a group without negative weights)
    zero = torch.full_like(scale, (maxq + 1) // 2) if sym else torch.round(-lo / scale).clamp(1, maxq)
    return scale, zero


def quantize_codes(w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int) -> torch.Tensor:
    """Integer codes of `w` [rows] or [rows, n] on the grid (scale, zero) given per row."""
    if w.dim() == 2:
        scale, zero = scale[:, None], zero[:, None]
    return torch.clamp(torch.round(w / scale) + zero, 0, 2**bits - 1)


def quantize_rtn(weight: torch.Tensor, bits: int, group_size: int, sym: bool) -> QuantizedWeight:
    """Round-to-nearest: each group of `group_size` input channels (-1: all of them) gets its own grid."""
    w = weight.float()
    rows, cols = w.shape
    size = cols if group_size == -1 else group_size
    codes = torch.empty(rows, cols, dtype=torch.int32)
    scales, zeros = [], []
    for start in range(0, cols, size):
        part = w[:, start:start + size]
        scale, zero = grid(part, bits, sym)
        codes[:, start:start + size] = quantize_codes(part, scale, zero, bits).int()
        scales.append(scale.half())
        zeros.append(zero.int())
    g_idx = (torch.arange(cols) // size).int()
    return QuantizedWeight(codes, torch.stack(scales), torch.stack(zeros), g_idx, bits)
