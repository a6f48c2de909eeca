"""The shared causal attention that m1-m4 prefill with: PyTorch's fused kernel, not its math fallback."""

import torch

from shared.attention import causal_attention


def sdpa_kernels(q, k, v, q_start: int) -> set[str]:
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        causal_attention(q, k, v, q_start=q_start)
    return {e.name for e in prof.events() if "scaled_dot_product" in e.name}


def test_prefill_takes_the_fused_kernel():
    """3-D inputs once sent every prefill to `_scaled_dot_product_attention_math`, which materialises the scores
    (15 s instead of 2 s for a 7.9K-token prompt on tiny-qwen3). 4-D inputs take the flash kernel on CPU."""
    q, k, v = torch.randn(300, 4, 64), torch.randn(300, 2, 64), torch.randn(300, 2, 64)
    for start, tk in ((0, 300), (100, 400)):  # a fresh prompt (is_causal) and one after cached context (a mask)
        kk, vv = torch.randn(tk, 2, 64), torch.randn(tk, 2, 64)
        kernels = sdpa_kernels(q, kk, vv, start) if start else sdpa_kernels(q, k, v, 0)
        assert not any("math" in name for name in kernels), kernels
        assert any("flash" in name for name in kernels), kernels


def test_matches_the_formula():
    q, k, v = torch.randn(5, 4, 32), torch.randn(9, 2, 32), torch.randn(9, 2, 32)
    out = causal_attention(q, k, v, q_start=4)
    scores = torch.einsum("qhd,khd->hqk", q, k.repeat_interleave(2, 1)) / 32**0.5
    scores = scores.masked_fill(torch.arange(9)[None, :] > torch.arange(4, 9)[:, None], float("-inf"))
    want = torch.einsum("hqk,khd->qhd", scores.softmax(-1), v.repeat_interleave(2, 1))
    torch.testing.assert_close(out, want, atol=1e-5, rtol=1e-5)
