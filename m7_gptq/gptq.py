"""M7's GPTQ (Frantar et al., 2022): quantize one linear layer's weight so that its outputs on calibration
inputs change as little as possible.

For a layer y = W x and calibration inputs X [in, n], GPTQ minimises ||W X - Q X||² row by row. All rows
share the Hessian H = 2 X Xᵀ [in, in] of that objective, which `HessianAccumulator` builds from the inputs
the layer sees. Columns are quantized one at a time, left to right; after quantizing column i to q_i, the
error is pushed onto the columns not yet quantized, in proportion to how the inputs correlate (the Optimal
Brain Surgeon update):

    err = (w_i - q_i) / [H⁻¹]_ii          W[:, i+1:] -= err · [H⁻¹]_{i, i+1:}

where H⁻¹ is the inverse over the columns still unquantized. Its rows for every step are the rows of the
upper Cholesky factor of the full H⁻¹, computed once (the "Cholesky trick"). Updates inside a block of
128 columns are applied column by column; the rest of the matrix receives the block's accumulated errors
in one matmul ("lazy batch" updates). Dampening adds `damp_percent` of the mean diagonal to H, so that the
Cholesky factorisation exists when inputs are correlated or scarce. With act-order (`desc_act`) columns
are visited in order of decreasing H diagonal (the inputs with the most energy first) and `g_idx` records
the group each input channel ended up in.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from m7_gptq.quantizer import QuantizedWeight, grid, quantize_codes

BLOCK = 128  # columns per lazy-update block (the paper's B)


class HessianAccumulator:
    """The running H = 2/n · Σ x xᵀ over every input row x a layer has seen (the mean keeps it scale-free)."""

    def __init__(self, in_features: int) -> None:
        self.h = torch.zeros(in_features, in_features, dtype=torch.float64)  # float64: n can reach 10^5 rows
        self.rows = 0

    def add(self, x: torch.Tensor) -> None:
        x = x.reshape(-1, x.shape[-1]).double()  # [n, in]
        n = x.shape[0]
        self.h *= self.rows / (self.rows + n)
        self.rows += n
        self.h += (2.0 / self.rows) * (x.T @ x)

    @property
    def hessian(self) -> torch.Tensor:
        return self.h.float()


@dataclass
class GPTQResult:
    weight: QuantizedWeight
    loss: float  # Σ (w - q)² / (2 [H⁻¹]_ii) over the columns: GPTQ's own estimate of the added output error


@torch.no_grad()
def gptq_quantize(weight: torch.Tensor, hessian: torch.Tensor, bits: int = 4, group_size: int = 128,
                  sym: bool = True, desc_act: bool = False, damp_percent: float = 0.01) -> GPTQResult:
    """Quantize `weight` [out, in] given the Hessian [in, in] of its inputs. Returns the codes, per-group
    scales and zeros (in the layer's original column order) and the summed quantization loss."""
    w = weight.detach().float().clone()  # [out, in]
    h = hessian.detach().float().clone()  # [in, in]
    cols = w.shape[1]
    size = cols if group_size == -1 else group_size

    dead = h.diagonal() == 0  # an input that was always 0: its weights never matter
    h[dead, dead] = 1
    w[:, dead] = 0
    perm = torch.argsort(h.diagonal(), descending=True) if desc_act else torch.arange(cols)
    w, h = w[:, perm], h[perm][:, perm]

    h.diagonal().add_(damp_percent * h.diagonal().mean())
    # rows of the upper Cholesky factor of H⁻¹ = the H⁻¹ rows GPTQ needs after each elimination step
    hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)

    codes = torch.zeros_like(w, dtype=torch.int32)
    scales, zeros = [], []
    scale = zero = None
    loss = 0.0
    for b0 in range(0, cols, BLOCK):
        b1 = min(b0 + BLOCK, cols)
        block = w[:, b0:b1].clone()  # [out, B], updated column by column
        errors = torch.zeros_like(block)
        hinv_b = hinv[b0:b1, b0:b1]
        for i in range(b1 - b0):
            col = b0 + i
            if col % size == 0:  # a new group: its grid is chosen on the weights as corrected so far
                upcoming = block[:, i:i + size]
                if upcoming.shape[1] < size and b1 < cols:  # a group wider than what is left of the block
                    upcoming = torch.cat([upcoming, w[:, b1:b1 + size - upcoming.shape[1]]], dim=1)
                scale, zero = grid(upcoming, bits, sym)
                scales.append(scale.half())
                zeros.append(zero.int())
            x = block[:, i]
            q = quantize_codes(x, scale, zero, bits)
            codes[:, col] = q.int()
            err = (x - scale * (q - zero)) / hinv_b[i, i]
            loss += err.square().sum().item() / 2  # (w - q)² / [H⁻¹]_ii: the OBS cost of this column
            block[:, i:] -= err[:, None] * hinv_b[i, i:][None, :]
            errors[:, i] = err
        w[:, b1:] -= errors @ hinv[b0:b1, b1:]  # the lazy update: the whole block's errors at once

    inverse = torch.argsort(perm)
    group_of_position = torch.arange(cols) // size  # groups are formed in visiting order
    g_idx = group_of_position[inverse].int()  # the group of each input channel, in the layer's own order
    quantized = QuantizedWeight(codes[:, inverse].contiguous(), torch.stack(scales), torch.stack(zeros), g_idx, bits)
    return GPTQResult(quantized, loss)
