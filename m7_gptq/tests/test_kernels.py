"""The dequant-matmul kernels behind GPTQLinear (kernels.py, gptq_triton_kernel.py) and their automatic choice.

Every kernel is compared with the plain product x · dequantize(W)ᵀ over layouts that stress it: groups of
32 and 128 and one group per row, act-order (scattered g_idx), symmetric and asymmetric zero points, a
bias, and batch sizes 1 (decode), 7 and 33 (past one tile). Triton runs under `TRITON_INTERPRET=1` on CPU.
Tolerances: torch and triton compute in float32 (relative 1e-5); cpu_int4 rounds activations and its
scale/zero pairs to bfloat16 (8 significant bits), so it is held to 2% of the output's scale.
"""

import logging

import pytest
import torch

from m7_gptq.gptq import gptq_quantize
from m7_gptq.kernels import KERNELS, resolve_kernel
from m7_gptq.packing import to_checkpoint
from m7_gptq.quant_config import GPTQConfig
from m7_gptq.quant_linear import GPTQLinear, gptq_linear_factory, prepare_quantized

CUDA = torch.cuda.is_available()
LAYOUTS = [  # (out, in, group_size, desc_act, sym)
    (96, 256, 128, False, True),
    (64, 256, 32, True, False),
    (48, 128, -1, False, True),
    (128, 96, 32, True, True),
]


def quantized_layer(out: int, inp: int, group_size: int, desc_act: bool, sym: bool, kernel: str, bias: bool = False,
                    seed: int = 0):
    """A GPTQLinear holding a GPTQ-quantized random weight, prepared for `kernel`; and its dense weight [out, in]."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(out, inp, generator=g) * 0.05
    x = torch.randn(512, inp, generator=g) * (torch.rand(inp, generator=g) * 3)
    config = GPTQConfig(4, group_size, desc_act, sym)
    q = gptq_quantize(w, 2 * x.T @ x / len(x), 4, group_size, sym, desc_act).weight
    layer = GPTQLinear(inp, out, bias, config, KERNELS[kernel])
    for name, tensor in to_checkpoint(q, config).items():
        getattr(layer, name).copy_(tensor)
    if bias:
        layer.bias.data = torch.randn(out, generator=g)
    layer.kernel.prepare(layer)
    return layer, q.dequantize()


@pytest.mark.parametrize("layout", LAYOUTS, ids=lambda v: "x".join(map(str, v)))
@pytest.mark.parametrize("kernel", ["torch", "cpu_int4", "triton"])
@pytest.mark.parametrize("rows", [1, 7, 33])
def test_kernel_equals_the_dequantized_product(layout, kernel, rows):
    if kernel == "cpu_int4" and KERNELS[kernel].unsupported(layout[1], layout[0], GPTQConfig(4, layout[2])):
        pytest.skip("layout outside cpu_int4's")
    layer, dense = quantized_layer(*layout, kernel=kernel, bias=rows == 7)
    x = torch.randn(rows, layout[1])
    want = x @ dense.T + (layer.bias.detach() if layer.bias is not None else 0)
    with torch.no_grad():
        got = layer(x)
    assert got.shape == (rows, layout[0]) and got.dtype == torch.float32
    if kernel == "cpu_int4":
        assert (got - want).abs().max() <= 0.02 * want.abs().max()
    else:
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5 * want.abs().max().item())


def test_cpu_int4_repacks_once_and_drops_the_checkpoint_layout():
    layer, _ = quantized_layer(64, 256, 32, True, False, kernel="cpu_int4")
    assert layer.qweight.numel() == 0 and layer.scales.numel() == 0  # replaced by the kernel's own layout
    assert layer.int4_weight.dtype == torch.uint8 and layer.int4_weight.numel() == 64 * 256 // 2
    assert layer.int4_scale_zero.shape == (8, 64, 2) and layer.int4_perm is not None  # act-order: channels sorted
    plain, _ = quantized_layer(96, 256, 128, False, True, kernel="cpu_int4")
    assert plain.int4_perm is None  # groups already in channel order: no permutation per call


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_triton_on_cuda_in_half_precision(dtype):
    layer, dense = quantized_layer(256, 512, 128, True, False, kernel="triton")
    layer = layer.cuda()
    for rows in (1, 16, 64):
        x = torch.randn(rows, 512, device="cuda", dtype=dtype)
        want = (x.float() @ dense.cuda().T)
        got = layer(x)
        assert got.dtype == dtype and (got.float() - want).abs().max() <= 0.02 * want.abs().max()


def test_automatic_choice_per_device_and_layer(caplog):
    config = GPTQConfig()
    assert resolve_kernel("auto", "cpu") == "cpu_int4"
    make = gptq_linear_factory(config, "auto", "cpu")
    assert make(256, 768, False).kernel.name == "cpu_int4"
    assert make(256, 8, False).kernel.name == "torch"  # 8 outputs: not the multiple of 16 int4's layout needs
    assert gptq_linear_factory(GPTQConfig(bits=8), "auto", "cpu")(256, 768, False).kernel.name == "torch"
    model = torch.nn.Sequential(make(256, 768, False), make(256, 8, False))
    for layer in model:
        layer.qzeros.fill_(0x77777777)
        layer.scales.fill_(1.0)
        layer.qweight.zero_()
        layer.g_idx.copy_(torch.arange(256) // 128)
    with caplog.at_level(logging.INFO, logger="m7_gptq.quant_linear"):
        assert prepare_quantized(model, "auto", "cpu") == "cpu_int4+torch"
    assert "GPTQ kernel: cpu_int4+torch (asked for 'auto' on cpu; 1 layers cpu_int4, 1 layers torch)" in caplog.text


@pytest.mark.parametrize(("name", "device", "message"), [
    ("marlin", "cpu", "quant_kernel must be one of"),
    ("cpu_int4", "cuda", "CPU kernel"),
])
def test_kernels_that_cannot_run_are_named(name, device, message):
    with pytest.raises(ValueError, match=message):
        resolve_kernel(name, device)


def test_triton_on_cpu_needs_the_interpreter(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(ValueError, match="TRITON_INTERPRET=1"):
        resolve_kernel("triton", "cpu")


def test_a_named_kernel_that_cannot_take_a_layer_is_an_error():
    make = gptq_linear_factory(GPTQConfig(), "cpu_int4", "cpu")
    with pytest.raises(ValueError, match="cannot run a 256->8 layer: its layout needs output features in multiples of 16"):
        make(256, 8, False)
    with pytest.raises(ValueError, match="multiple of 8"):
        GPTQLinear(100, 64, False, GPTQConfig(), KERNELS["torch"])
