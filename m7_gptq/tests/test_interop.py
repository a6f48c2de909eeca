"""Interop: a checkpoint we did not write. `fixtures/gptqmodel_tiny` is tiny-qwen3 quantized by GPTQModel 7.6.0
(4-bit, group size 32, act-order, asymmetric, the v1 "gptq" format), with the logits GPTQModel's own CPU
inference (its TorchLinear kernel, in float16) gave for two held-out windows of 32 tokens
(`reference/logits.safetensors`; how it was made: `fixture.json`, `shared/tools/gptqmodel_fixture.py`).

Our loader and kernels reproduce them: in float16 with the torch kernel, bit for bit here (max difference 0.0;
held to 1e-3); in float32, within 0.03 (measured 0.013: GPTQModel rounds every product to float16) with the same top
token everywhere; cpu_int4 (bfloat16 activations) within 0.1 (measured 0.046).
"""

import functools
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from m7_gptq import LLM
from m7_gptq.quant_config import GPTQConfig, read_quant_config
from shared.tools.reference import our_logits

FIXTURE = Path(__file__).parent / "fixtures" / "gptqmodel_tiny"


@functools.cache
def reference() -> dict[str, torch.Tensor]:
    return load_file(FIXTURE / "reference" / "logits.safetensors")


def logits(kernel: str, dtype: str) -> list[torch.Tensor]:
    model = LLM(model=str(FIXTURE), quant_kernel=kernel, dtype=dtype, max_model_len=256).engine.model
    return [our_logits(model, ids.tolist()).float() for ids in reference()["input_ids"]]


def test_the_settings_are_read_from_gptqmodels_config():
    assert read_quant_config(FIXTURE) == GPTQConfig(bits=4, group_size=32, desc_act=True, sym=False, damp_percent=0.01)


def test_float16_reproduces_gptqmodels_logits():
    """The same arithmetic as GPTQModel's TorchLinear: bit for bit on this machine, held to 1e-3 (other CPUs may
    order float16 sums differently)."""
    for ours, theirs in zip(logits("torch", "float16"), reference()["logits"], strict=True):
        torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-3)


@pytest.mark.parametrize(("kernel", "atol", "agree"), [("torch", 0.03, 1.0), ("triton", 0.03, 1.0), ("cpu_int4", 0.1, 0.9)])
def test_float32_kernels_reproduce_gptqmodels_logits(kernel, atol, agree):
    for ours, theirs in zip(logits(kernel, "float32"), reference()["logits"], strict=True):
        assert (ours - theirs).abs().max() < atol
        assert (ours.argmax(-1) == theirs.argmax(-1)).float().mean() >= agree


def test_the_unquantized_model_is_told_apart():
    """The tolerance means something: the full-precision model's logits are far outside it."""
    model = LLM(model="tiny-qwen3", max_model_len=256).engine.model
    ids = reference()["input_ids"][0].tolist()
    assert (our_logits(model, ids) - reference()["logits"][0]).abs().max() > 0.2
