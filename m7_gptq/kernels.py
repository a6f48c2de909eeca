"""M7's dequant-matmul kernels: three ways to compute y = x Wᵀ from a GPTQ layer's packed tensors.

    torch     the reference: unpack every code, dequantize the whole W in x's dtype, one matmul. Simple and
              exact up to float rounding; it materialises W on every call, so it saves memory, not time.
    cpu_int4  torch's int4 weight-only CPU kernel (`aten._weight_int4pack_mm_for_cpu`, the tinygemm layout).
              The codes are repacked once at load; the kernel dequantizes inside its matmul loop. It reads
              w = (q - 8) · scale + zero with a floating zero, so a GPTQ group maps to zero = scale · (8 - z).
              Its fast path takes bfloat16 activations (fp32 ones take a slow scalar path), so x is rounded
              to bfloat16 for the product. Act-order layers get their input channels sorted by group once
              at load, and x's columns are permuted to match on every call, as exllama does.
    triton    the fused kernel of gptq_triton_kernel.py: unpack and dequantize in registers, tl.dot.

`auto` picks triton on CUDA (torch without triton), and cpu_int4 on CPU for 4-bit weights whose shapes its
layout takes (output features a multiple of 16, groups of 32/64/128/256), else torch. The choice is logged.
Each kernel's `prepare` turns the checkpoint layout into its own once, after loading (vLLM's
`process_weights_after_loading`); `forward` is called on every step.
"""

from __future__ import annotations

import os

import torch

from m7_gptq.attention import triton_available
from m7_gptq.packing import unpack_cols, unpack_rows

KERNEL_NAMES = ("auto", "torch", "cpu_int4", "triton")
INT4PACK_GROUPS = (32, 64, 128, 256)  # the group sizes the int4 CPU kernel takes
INT4PACK_INNER_K_TILES = 2  # a layout parameter of torch's CPU int4 packing (its CUDA twin needs 2, 4 or 8)


def cpu_int4_available() -> bool:
    return hasattr(torch.ops.aten, "_weight_int4pack_mm_for_cpu")


def dequantize(layer, dtype: torch.dtype) -> torch.Tensor:
    """A GPTQ layer's weight as [in, out] in `dtype`, computed in float32 (one rounding, at the end)."""
    codes = unpack_rows(layer.qweight, layer.config.bits)  # [in, out]
    zeros = unpack_cols(layer.qzeros, layer.config.bits) + layer.config.zero_offset  # [groups, out]
    g = layer.g_idx.long()
    return ((codes - zeros[g]).float() * layer.scales[g].float()).to(dtype)


class TorchKernel:
    name = "torch"

    @staticmethod
    def unsupported(in_features: int, out_features: int, config) -> str | None:
        return None

    @staticmethod
    def prepare(layer) -> None:
        pass  # the checkpoint's layout is the kernel's

    @staticmethod
    def forward(layer, x: torch.Tensor) -> torch.Tensor:
        w = dequantize(layer, x.dtype)  # [in, out]
        y = x @ w
        return y + layer.bias if layer.bias is not None else y


class CpuInt4Kernel:
    name = "cpu_int4"

    @staticmethod
    def unsupported(in_features: int, out_features: int, config) -> str | None:
        if config.bits != 4:
            return f"it takes 4-bit weights, not {config.bits}-bit"
        if not cpu_int4_available():
            return "this torch has no aten._weight_int4pack_mm_for_cpu"
        if out_features % 16:
            return f"its layout needs output features in multiples of 16, got {out_features}"
        if _int4pack_group(in_features, config) is None:
            return f"its groups are {list(INT4PACK_GROUPS)} input channels dividing {in_features}, not {config.group_size}"
        return None

    @staticmethod
    def prepare(layer) -> None:
        cfg = layer.config
        codes = unpack_rows(layer.qweight, 4)  # [in, out]
        zeros = (unpack_cols(layer.qzeros, 4) + cfg.zero_offset).float()  # [groups, out]
        scales = layer.scales.float()
        g_idx = layer.g_idx.long()
        perm = torch.argsort(g_idx, stable=True)
        if torch.equal(perm, torch.arange(len(perm))):
            perm = None  # groups already in channel order (no act-order)
        else:
            codes, g_idx = codes[perm], g_idx[perm]  # channels sorted by group: each group is contiguous
        group = _int4pack_group(layer.in_features, cfg)
        repeat = layer.in_features // group // scales.shape[0]  # > 1 only for group_size -1 (one group per row)
        scales, zeros = scales.repeat_interleave(repeat, 0), zeros.repeat_interleave(repeat, 0)
        packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes.T.contiguous(), INT4PACK_INNER_K_TILES)
        scale_zero = torch.stack([scales, scales * (8 - zeros)], dim=-1).to(torch.bfloat16)  # [groups, out, 2]
        layer.register_buffer("int4_weight", packed, persistent=False)
        layer.register_buffer("int4_scale_zero", scale_zero.contiguous(), persistent=False)
        layer.register_buffer("int4_perm", perm, persistent=False)
        layer.int4_group = group
        for name in ("qweight", "qzeros", "scales", "g_idx"):  # the checkpoint layout is not needed any more
            setattr(layer, name, torch.empty(0, dtype=getattr(layer, name).dtype))

    @staticmethod
    def forward(layer, x: torch.Tensor) -> torch.Tensor:
        if layer.int4_perm is not None:
            x = x[:, layer.int4_perm]
        y = torch.ops.aten._weight_int4pack_mm_for_cpu(
            x.to(torch.bfloat16).contiguous(), layer.int4_weight, layer.int4_group, layer.int4_scale_zero).to(x.dtype)
        return y + layer.bias if layer.bias is not None else y


def _int4pack_group(in_features: int, config) -> int | None:
    """The group size the int4 CPU kernel runs a layer with: its own, or for group_size -1 the largest
    supported size dividing the row (every group then repeats the row's one scale and zero)."""
    sizes = INT4PACK_GROUPS if config.group_size == -1 else (config.group_size,)
    fits = [g for g in sizes if g in INT4PACK_GROUPS and in_features % g == 0]
    return max(fits) if fits else None


class TritonKernel:
    name = "triton"

    @staticmethod
    def unsupported(in_features: int, out_features: int, config) -> str | None:
        return None if triton_available() else "the triton package is not installed (pip install -e '.[gpu]')"

    @staticmethod
    def prepare(layer) -> None:
        TorchKernel.prepare(layer)

    @staticmethod
    def forward(layer, x: torch.Tensor) -> torch.Tensor:
        from m7_gptq.gptq_triton_kernel import gptq_matmul

        return gptq_matmul(x, layer.qweight, layer.scales, layer.qzeros, layer.g_idx, layer.config.bits,
                           layer.config.zero_offset, layer.bias)


KERNELS = {k.name: k for k in (TorchKernel, CpuInt4Kernel, TritonKernel)}


def resolve_kernel(name: str, device: str) -> str:
    """The kernel `name` stands for on `device`, before any layer's shape is known. A kernel that cannot run
    there is a ValueError that says why."""
    if name not in KERNEL_NAMES:
        raise ValueError(f"quant_kernel must be one of {list(KERNEL_NAMES)}, got {name!r}")
    cuda = device.startswith("cuda")
    if name == "auto":
        return ("triton" if triton_available() else "torch") if cuda else "cpu_int4"
    if name == "cpu_int4" and cuda:
        raise ValueError("quant_kernel='cpu_int4' is torch's CPU kernel; on CUDA use 'triton' or 'torch'")
    if name == "triton":
        if not triton_available():
            raise ValueError("quant_kernel='triton' needs the triton package: pip install -e '.[gpu]'")
        if not cuda and os.environ.get("TRITON_INTERPRET") != "1":
            raise ValueError("quant_kernel='triton' runs on CUDA; on CPU only under TRITON_INTERPRET=1 (slow, for tests)")
    return name
