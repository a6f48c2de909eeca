"""M7's checkpoint layout: GPTQ codes packed into int32 words, as GPTQModel/AutoGPTQ write them and vLLM reads them.

For a linear layer y = x Wᵀ with W [out, in], b-bit codes (b = 4: eight codes per word):

    qweight  int32 [in / 8, out]       packed along the INPUT dimension: word [i, j] holds the codes of
                                       input channels 8i .. 8i+7 of output j, channel 8i+k in bits 4k .. 4k+3
    qzeros   int32 [groups, out / 8]   packed along the OUTPUT dimension: word [g, j] holds the zero points
                                       of outputs 8j .. 8j+7 in group g, output 8j+k in bits 4k .. 4k+3
    scales   float16 [groups, out]
    g_idx    int32 [in]                the group of each input channel (i // group_size without act-order)

    w[j, i] = scales[g, j] * (code[i, j] - (stored_zero[g, j] + 1)),   g = g_idx[i]

The "+ 1" is the historical off-by-one of the v1 format ("checkpoint_format": "gptq"): AutoGPTQ subtracted 1
from every zero point before packing, and every reader adds it back. A symmetric 4-bit checkpoint's true zero
is 8, so its qzeros words read 0x77777777. The v2 format ("gptq_v2", GPTQModel's internal one) stores the
true zero. Bits beyond the sign are handled as unsigned: words are packed in int64 and wrapped to int32.
"""

from __future__ import annotations

import torch

from m7_gptq.quant_config import GPTQConfig
from m7_gptq.quantizer import QuantizedWeight


def pack_rows(values: torch.Tensor, bits: int) -> torch.Tensor:
    """[rows, cols] codes in 0 .. 2^bits-1 -> int32 [rows / (32/bits), cols]: consecutive rows share a word."""
    per_word = 32 // bits
    rows, cols = values.shape
    if rows % per_word:
        raise ValueError(f"{rows} rows cannot be packed {per_word} to a word")
    v = values.to(torch.int64).view(rows // per_word, per_word, cols)  # [words, k, cols]
    shifts = (torch.arange(per_word, dtype=torch.int64) * bits)[None, :, None]
    words = (v << shifts).sum(dim=1)  # disjoint bit fields: the sum is the bitwise or
    return ((words + 2**31) % 2**32 - 2**31).to(torch.int32)  # the unsigned word, read as a signed int32


def unpack_rows(words: torch.Tensor, bits: int) -> torch.Tensor:
    """Inverse of `pack_rows`: int32 [words, cols] -> int32 codes [words * (32/bits), cols]."""
    per_word = 32 // bits
    shifts = (torch.arange(per_word, dtype=torch.int32, device=words.device) * bits)[None, :, None]
    codes = (words[:, None, :] >> shifts) & (2**bits - 1)  # [words, k, cols]; the mask undoes the sign extension
    return codes.reshape(-1, words.shape[1])


def pack_cols(values: torch.Tensor, bits: int) -> torch.Tensor:
    """[rows, cols] -> int32 [rows, cols / (32/bits)]: consecutive columns share a word (the qzeros layout)."""
    return pack_rows(values.T, bits).T.contiguous()


def unpack_cols(words: torch.Tensor, bits: int) -> torch.Tensor:
    return unpack_rows(words.T, bits).T.contiguous()


def to_checkpoint(q: QuantizedWeight, config: GPTQConfig) -> dict[str, torch.Tensor]:
    """The four tensors one linear layer stores (names without the layer prefix)."""
    stored_zeros = q.zeros - config.zero_offset
    if stored_zeros.min() < 0:
        raise ValueError("a zero point of 0 cannot be stored in the v1 format (it would read back as 2^bits)")
    return {
        "qweight": pack_rows(q.codes.T.contiguous(), q.bits),
        "qzeros": pack_cols(stored_zeros, q.bits),
        "scales": q.scales.to(torch.float16).contiguous(),
        "g_idx": q.g_idx.to(torch.int32).contiguous(),
    }


def from_checkpoint(qweight: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor, g_idx: torch.Tensor,
                    config: GPTQConfig) -> QuantizedWeight:
    """Unpack one layer's stored tensors back into codes [out, in] and true zero points."""
    codes = unpack_rows(qweight, config.bits).T.contiguous()
    zeros = unpack_cols(qzeros, config.bits) + config.zero_offset
    return QuantizedWeight(codes, scales.to(torch.float16), zeros, g_idx.to(torch.int32), config.bits)
