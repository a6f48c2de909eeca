"""M7's calibration: quantize a whole model layer by layer, each layer on the outputs of the quantized ones before it.

GPTQ needs, for every linear layer, the Hessian H = 2 X Xᵀ of the inputs X it sees. They are captured one
decoder layer at a time, as in the paper: the calibration samples' hidden states enter layer 0; inside a
layer the projections are quantized in the order data flows through them ("true sequential"):

    q, k, v  ->  o  ->  gate, up  ->  down

each group's Hessian collected with the groups before it already quantized (projections that read the same
input share one Hessian). The layer is then run once more, quantized, and its outputs become the next
layer's inputs. So the error of early layers is seen, and partly corrected, by later ones, and only one
layer's activations are held at a time.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from m7_gptq.gptq import HessianAccumulator, gptq_quantize
from m7_gptq.quant_config import GPTQConfig
from m7_gptq.quantizer import QuantizedWeight, quantize_rtn
from shared.attention import AttentionMetadata, WholeSequenceAttention

SEQUENTIAL_GROUPS = (
    ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
    ("self_attn.o_proj",),
    ("mlp.gate_proj", "mlp.up_proj"),
    ("mlp.down_proj",),
)
METHODS = ("gptq", "rtn")


@dataclass
class LayerReport:
    """How much one projection's output moved on the calibration inputs: ||ΔW X||² / ||W X||²."""

    name: str
    shape: tuple[int, int]  # [out, in]
    error: float | None  # this method's relative output error (None for RTN, which sees no inputs)
    rtn_error: float | None  # round-to-nearest's on the same inputs, for comparison


def relative_error(weight: torch.Tensor, approx: torch.Tensor, hessian: torch.Tensor) -> float:
    """||(W - Q) X||² / ||W X||², computed from H ∝ X Xᵀ without X: tr(ΔW H ΔWᵀ) / tr(W H Wᵀ)."""
    delta = weight.float() - approx.float()
    return ((delta @ hessian) * delta).sum().item() / max(((weight.float() @ hessian) * weight.float()).sum().item(), 1e-30)


@torch.no_grad()
def quantize_model(model, samples: list[torch.Tensor], config: GPTQConfig, method: str = "gptq",
                   on_step: Callable[[str], None] | None = None) -> tuple[dict[str, QuantizedWeight], list[LayerReport]]:
    """Quantize every decoder projection of `model` (the shared Qwen3ForCausalLM, float32) in place: each
    weight is replaced by its dequantized self, so later layers see quantized outputs. `samples`: token id
    tensors [T] (ignored by RTN). `on_step(label)` is called after each group (a progress bar's hook).
    Returns the quantized weights by checkpoint prefix and a report per projection."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {list(METHODS)}, got {method!r}")
    backend, metadata = WholeSequenceAttention(), AttentionMetadata()
    rope = model.model.rotary_emb
    hidden = [model.model.embed_tokens(ids) for ids in samples] if method == "gptq" else []
    positions = [torch.arange(len(ids), device=ids.device) for ids in samples]
    weights: dict[str, QuantizedWeight] = {}
    reports: list[LayerReport] = []
    for index, layer in enumerate(model.model.layers):
        for group in SEQUENTIAL_GROUPS:
            linears = {name: layer.get_submodule(name) for name in group}
            hessian = None
            if method == "gptq":
                first = next(iter(linears.values()))
                acc = HessianAccumulator(first.in_features)
                handle = first.register_forward_hook(lambda module, args, out, acc=acc: acc.add(args[0]))
                for h, pos in zip(hidden, positions, strict=True):
                    layer(h, pos, rope, backend, metadata)
                handle.remove()
                hessian = acc.hessian
            for name, linear in linears.items():
                w = linear.weight
                rtn = quantize_rtn(w, config.bits, config.group_size, config.sym)
                if hessian is None:
                    q, report = rtn, LayerReport(name, tuple(w.shape), None, None)
                else:
                    q = gptq_quantize(w, hessian, config.bits, config.group_size, config.sym, config.desc_act,
                                      config.damp_percent).weight
                    report = LayerReport(name, tuple(w.shape), relative_error(w, q.dequantize(), hessian),
                                         relative_error(w, rtn.dequantize(), hessian))
                report.name = f"model.layers.{index}.{name}"
                weights[report.name] = q
                reports.append(report)
                w.copy_(q.dequantize(w.dtype))
            if on_step:
                on_step(f"layer {index} {'/'.join(n.split('.')[-1].removesuffix('_proj') for n in group)}")
        if method == "gptq":  # the quantized layer's outputs feed the next layer
            hidden = [layer(h, pos, rope, backend, metadata) for h, pos in zip(hidden, positions, strict=True)]
    return weights, reports
