"""The GPTQ algorithm (gptq.py) and its grid (quantizer.py), on synthetic layers whose inputs are correlated.

The quality bar is the layer-wise objective GPTQ minimises, ||(W - Q) X||², measured on the inputs themselves.
"""

import pytest
import torch

import m7_gptq.gptq
from m7_gptq.gptq import HessianAccumulator, gptq_quantize
from m7_gptq.quantizer import grid, quantize_codes, quantize_rtn


def correlated_inputs(n: int, dim: int, seed: int = 0) -> torch.Tensor:
    """[n, dim] inputs like a transformer's activations: strongly correlated channels (a low-rank signal plus
    noise) of different energy, a few of them outliers."""
    g = torch.Generator().manual_seed(seed)
    rank = dim // 4
    x = torch.randn(n, rank, generator=g) @ torch.randn(rank, dim, generator=g) / rank**0.5
    x += 0.2 * torch.randn(n, dim, generator=g)
    energy = torch.rand(dim, generator=g) * 2 + 0.5
    energy[torch.randperm(dim, generator=g)[:4]] *= 8
    return x * energy


def layer(out: int = 96, dim: int = 256, seed: int = 0):
    g = torch.Generator().manual_seed(seed + 1)
    w = torch.randn(out, dim, generator=g) * 0.05
    x = correlated_inputs(1024, dim, seed)
    acc = HessianAccumulator(dim)
    acc.add(x)
    return w, x, acc.hessian


def output_error(w: torch.Tensor, q: torch.Tensor, x: torch.Tensor) -> float:
    return ((x @ (w - q).T) ** 2).sum().item() / ((x @ w.T) ** 2).sum().item()


def test_hessian_is_the_mean_of_2xxt_over_every_row_seen():
    x = torch.randn(300, 16)
    acc = HessianAccumulator(16)
    for part in (x[:7], x[7:200], x[200:]):
        acc.add(part[None])  # a leading batch dimension is flattened away
    torch.testing.assert_close(acc.hessian, 2 * x.T @ x / 300, rtol=1e-5, atol=1e-5)
    assert acc.rows == 300


@pytest.mark.parametrize("sym", [True, False])
def test_grid_covers_the_group_and_keeps_zero_exact(sym):
    w = torch.randn(64, 32) * torch.rand(64, 1)
    w[0] = torch.rand(32) + 0.5  # a row without negative weights
    scale, zero = grid(w, 4, sym)
    assert torch.equal(scale, scale.half().float())  # float16 values: the checkpoint stores scales in float16
    assert zero.min() >= 1  # the v1 format cannot store a zero point of 0
    if sym:
        assert torch.all(zero == 8)
    codes = quantize_codes(w, scale, zero, 4)
    assert codes.min() >= 0 and codes.max() <= 15
    deq = scale[:, None] * (codes - zero[:, None])
    # rounding: half a step at most (at the grid's ends too, where rounding the zero point or the float16 scale
    # can push the extreme weight up to half a step, plus the float16 rounding, beyond the last code)
    inside = (w - deq).abs() <= 0.51 * scale[:, None]
    assert inside[1:].all()  # row 0 may clip its largest weight by one step (zero point 1, not 0)
    assert (w[0] - deq[0]).abs().max() <= 1.5 * scale[0]
    assert torch.all(quantize_codes(torch.zeros(64), scale, zero, 4) == zero)  # 0 is on every grid


def test_rtn_groups_have_their_own_grids():
    w = torch.randn(8, 128)
    w[:, 64:] *= 100  # in one group, the second half's range swamps the first half: it rounds to 0
    small = torch.eye(128)[:64]  # inputs that read the first half only
    assert output_error(w, quantize_rtn(w, 4, -1, True).dequantize(), small) == pytest.approx(1.0)
    assert output_error(w, quantize_rtn(w, 4, 64, True).dequantize(), small) < 0.02
    q = quantize_rtn(w, 4, 32, False)
    assert q.scales.shape == (4, 8) and q.zeros.shape == (4, 8) and torch.equal(q.g_idx, torch.arange(128) // 32)


@pytest.mark.parametrize("group_size", [-1, 32, 128])
@pytest.mark.parametrize("sym", [True, False])
@pytest.mark.parametrize("desc_act", [False, True])
def test_gptq_beats_round_to_nearest_on_the_layer_objective(group_size, sym, desc_act):
    w, x, h = layer()
    rtn = output_error(w, quantize_rtn(w, 4, group_size, sym).dequantize(), x)
    result = gptq_quantize(w, h, 4, group_size, sym, desc_act)
    gptq = output_error(w, result.weight.dequantize(), x)
    assert gptq < 0.5 * rtn, (gptq, rtn)  # measured: 0.33-0.36 in order, 0.06-0.07 with act-order
    codes = result.weight.codes
    assert codes.dtype == torch.int32 and codes.min() >= 0 and codes.max() <= 15


def test_act_order_helps_and_records_the_groups_in_g_idx():
    w, x, h = layer()
    plain = gptq_quantize(w, h, 4, 32, True, desc_act=False).weight
    ordered = gptq_quantize(w, h, 4, 32, True, desc_act=True).weight
    assert output_error(w, ordered.dequantize(), x) < output_error(w, plain.dequantize(), x)
    assert torch.equal(plain.g_idx, torch.arange(256) // 32)
    g = ordered.g_idx.long()
    assert torch.equal(torch.bincount(g), torch.full((8,), 32))  # 8 groups of 32 channels, scattered
    assert not torch.equal(g, torch.arange(256) // 32)
    by_energy = torch.argsort(h.diagonal(), descending=True)
    assert torch.all(g[by_energy[:32]] == 0)  # the 32 channels of most energy are quantized first, as group 0


def test_uncorrelated_inputs_leave_nothing_to_correct():
    """With H diagonal there is no correlation to exploit: GPTQ's updates vanish and it is exactly RTN."""
    w = torch.randn(32, 64)
    h = torch.diag(torch.rand(64) + 0.5)
    assert torch.equal(gptq_quantize(w, h, 4, 32, False).weight.codes, quantize_rtn(w, 4, 32, False).codes)


def test_lazy_block_updates_equal_column_by_column_updates(monkeypatch):
    w, _, h = layer(out=32, dim=256)
    blocked = gptq_quantize(w, h, 4, 32, True).weight
    monkeypatch.setattr(m7_gptq.gptq, "BLOCK", 1)  # every update applied to the whole matrix at once
    eager = gptq_quantize(w, h, 4, 32, True).weight
    same = (blocked.codes == eager.codes).float().mean().item()
    assert same > 0.999  # float summation order may flip a rounding tie, nothing more
    torch.testing.assert_close(blocked.scales, eager.scales, rtol=2e-3, atol=0)


def test_the_loss_estimate_matches_the_measured_output_error():
    w, x, h = layer()
    result = gptq_quantize(w, h, 4, 128, True)
    measured = ((x @ (w - result.weight.dequantize()).T) ** 2).sum().item() / len(x)  # = tr(ΔW H ΔWᵀ) / 2
    assert result.loss == pytest.approx(measured, rel=0.1)  # 1% dampening makes the estimate approximate


def test_dead_inputs_are_zeroed_without_nans():
    w, x, h = layer(out=16, dim=64)
    x[:, 5] = 0
    h = 2 * x.T @ x / len(x)
    q = gptq_quantize(w, h, 4, 32, False).weight
    deq = q.dequantize()
    assert torch.isfinite(deq).all()
    assert torch.all(deq[:, 5].abs() <= q.scales[0].float() / 2)  # input 5 never matters: its weights go to ~0


@pytest.mark.parametrize("bits", [2, 8])
def test_other_widths(bits):
    w, x, h = layer(out=32, dim=128)
    q = gptq_quantize(w, h, bits, 32, False).weight
    assert q.codes.max() <= 2**bits - 1
    err = output_error(w, q.dequantize(), x)
    assert err < output_error(w, quantize_rtn(w, bits, 32, False).dequantize(), x)
    assert (err < 1e-3) if bits == 8 else (err < 0.2)
