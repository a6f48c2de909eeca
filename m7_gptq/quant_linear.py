"""M7's quantized linear layer: what the shared model's `LinearFactory` seam builds for a GPTQ checkpoint.

`GPTQLinear` holds a layer's weight exactly as the checkpoint stores it (qweight, qzeros, scales, g_idx:
see packing.py), so `shared.loader.load_weights` fills it by name like any other tensor. After loading,
`prepare_quantized` hands each layer to its kernel, which may repack the tensors into its own layout once
(kernels.py). The model code (shared/model/) never changes: gpt-fast's "quantize offline, swap the module".
"""

from __future__ import annotations

import logging
from collections import Counter

import torch
from torch import nn

from m7_gptq.kernels import KERNELS, resolve_kernel
from m7_gptq.quant_config import GPTQConfig
from shared.model.layers import LinearFactory

log = logging.getLogger(__name__)


class GPTQLinear(nn.Module):
    """y = x Wᵀ (+ b) with W [out, in] stored as GPTQ codes. Buffers carry the checkpoint's names and dtypes."""

    def __init__(self, in_features: int, out_features: int, bias: bool, config: GPTQConfig, kernel) -> None:
        super().__init__()
        per_word = config.pack_factor
        for name, size in (("in_features", in_features), ("out_features", out_features)):
            if size % per_word:
                raise ValueError(f"a {config.bits}-bit GPTQ layer packs {per_word} codes per word, so {name} must be "
                                 f"a multiple of {per_word}, got {size}")
        self.in_features, self.out_features, self.config, self.kernel = in_features, out_features, config, kernel
        groups = config.num_groups(in_features)
        self.register_buffer("qweight", torch.empty(in_features // per_word, out_features, dtype=torch.int32))
        self.register_buffer("qzeros", torch.empty(groups, out_features // per_word, dtype=torch.int32))
        self.register_buffer("scales", torch.empty(groups, out_features, dtype=torch.float16))
        self.register_buffer("g_idx", torch.empty(in_features, dtype=torch.int32))
        self.bias = nn.Parameter(torch.empty(out_features)) if bias else None

    def _apply(self, fn, recurse: bool = True):
        # model.to(bfloat16) converts every floating buffer; the float16 scales must stay float16, or loading
        # would round the checkpoint's scales to bfloat16's 8 significant bits
        dtype = self.scales.dtype
        super()._apply(fn, recurse)
        self.scales = self.scales.to(dtype)
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.kernel.forward(self, x)  # x: [T, in] -> [T, out]

    def extra_repr(self) -> str:
        c = self.config
        return (f"in_features={self.in_features}, out_features={self.out_features}, bits={c.bits}, "
                f"group_size={c.group_size}, desc_act={c.desc_act}, sym={c.sym}, kernel={self.kernel.name}")


def gptq_linear_factory(config: GPTQConfig, kernel: str, device: str) -> LinearFactory:
    """A `LinearFactory` building GPTQLinear layers that run `kernel` ("auto" chooses per device, and falls back
    to the torch reference for a layer whose shape the chosen kernel cannot take; a kernel asked for by name
    that cannot take a layer is a ValueError)."""
    resolved = resolve_kernel(kernel, device)

    def make(in_features: int, out_features: int, bias: bool) -> GPTQLinear:
        chosen = KERNELS[resolved]
        reason = chosen.unsupported(in_features, out_features, config)
        if reason and kernel != "auto":
            raise ValueError(f"quant_kernel={kernel!r} cannot run a {in_features}->{out_features} layer: {reason}")
        if reason:
            chosen = KERNELS["torch"]
        return GPTQLinear(in_features, out_features, bias, config, chosen)

    return make


@torch.no_grad()
def prepare_quantized(model: nn.Module, asked: str, device: str) -> str:
    """Give every GPTQ layer of a loaded model to its kernel's `prepare`; log and return which kernels run
    (for example "cpu_int4", or "cpu_int4+torch" when some layers fell back)."""
    layers = [m for m in model.modules() if isinstance(m, GPTQLinear)]
    for layer in layers:
        layer.kernel.prepare(layer)
    counts = Counter(layer.kernel.name for layer in layers)
    name = "+".join(counts)
    log.info("GPTQ kernel: %s (asked for %r on %s; %s)", name, asked, device,
             ", ".join(f"{n} layers {k}" for k, n in counts.items()))
    return name
