"""The shared sampler: top-k/top-p keep exactly the right tokens, temperature, seeds, and frequencies."""

import pytest
import torch

from shared.sampling import Sampler, SamplingParams, apply_top_k_top_p, sampling_probs
from shared.tools.testing import sampling_rows


def _kept(logits, k, p):
    out = apply_top_k_top_p(logits[None], torch.tensor([k]), torch.tensor([p]))[0]
    return set(torch.nonzero(out > float("-inf")).flatten().tolist())


def test_top_k_keeps_exactly_k_largest():
    logits = torch.tensor([0.1, 3.0, -1.0, 2.0, 5.0, 0.0])
    assert _kept(logits, 1, 1.0) == {4}
    assert _kept(logits, 3, 1.0) == {4, 1, 3}
    assert _kept(logits, 0, 1.0) == set(range(6))  # 0 = off
    assert _kept(logits, 100, 1.0) == set(range(6))  # k > vocab keeps all


def test_top_k_with_ties_keeps_exactly_k():
    assert len(_kept(torch.zeros(10), 4, 1.0)) == 4


def test_top_p_keeps_smallest_set_reaching_p():
    probs = torch.tensor([0.5, 0.25, 0.15, 0.1])
    logits = probs.log()
    assert _kept(logits, 0, 0.5) == {0}  # 0.5 alone reaches 0.5
    assert _kept(logits, 0, 0.51) == {0, 1}
    assert _kept(logits, 0, 0.75) == {0, 1}
    assert _kept(logits, 0, 0.76) == {0, 1, 2}
    assert _kept(logits, 0, 0.01) == {0}  # the top token always survives
    assert _kept(logits, 0, 1.0) == {0, 1, 2, 3}


def test_top_k_then_top_p_renormalises():
    logits = torch.tensor([0.4, 0.3, 0.2, 0.1]).log()
    # top-2 leaves {0.4, 0.3} -> renormalised {0.571, 0.429}; top_p 0.5 then keeps only the first
    assert _kept(logits, 2, 0.5) == {0}
    assert _kept(logits, 2, 0.6) == {0, 1}


def test_temperature_scales_logits():
    logits = torch.randn(3, 50)
    for t in (0.5, 1.0, 2.0):
        probs = sampling_probs(logits, [SamplingParams(temperature=t)] * 3)
        torch.testing.assert_close(probs, (logits / t).softmax(-1))


def test_greedy_is_argmax():
    logits = torch.randn(4, 100)
    out = Sampler()(logits, sampling_rows([SamplingParams(temperature=0)] * 4)).token_ids
    assert torch.equal(out, logits.argmax(-1))


def test_seed_reproduces_and_is_independent_of_batch():
    logits = torch.randn(1, 1000)
    params = SamplingParams(temperature=1.0, seed=7)

    def draw(batch_extra):
        g = torch.Generator().manual_seed(7)
        others = [torch.Generator().manual_seed(100 + i) for i in range(batch_extra)]
        full = torch.cat([logits, torch.randn(batch_extra, 1000)])
        return [Sampler()(full, sampling_rows([params] * (1 + batch_extra), [g, *others])).token_ids[0].item() for _ in range(20)]

    a, b = draw(0), draw(5)
    assert a == b  # same seed -> same tokens, whatever else shares the batch
    g2 = torch.Generator().manual_seed(8)
    c = [Sampler()(logits, sampling_rows([params], [g2])).token_ids.item() for _ in range(20)]
    assert a != c


@pytest.mark.parametrize(("k", "p"), [(0, 1.0), (3, 1.0), (0, 0.8)])
def test_empirical_frequencies(k, p):
    """20,000 draws: each token's frequency is within 0.015 of its target probability (4+ std devs)."""
    target = torch.tensor([0.4, 0.25, 0.15, 0.1, 0.06, 0.04])
    params = SamplingParams(temperature=1.0, top_k=k, top_p=p)
    expected = sampling_probs(target.log()[None], [params])[0]
    n = 20_000
    g = torch.Generator().manual_seed(0)
    logits = target.log()[None].expand(n, -1).contiguous()
    tokens = Sampler()(logits, sampling_rows([params] * n, [g] * n)).token_ids
    freq = torch.bincount(tokens, minlength=6).float() / n
    assert (freq - expected).abs().max() < 0.015
    assert freq[expected == 0].sum() == 0  # masked tokens are never drawn


def test_rows_without_filters_keep_every_token_in_a_mixed_batch():
    """A row with top_p=1, top_k=0 keeps its full distribution even when another row is filtered."""
    logits = torch.randn(2, 151_936, generator=torch.Generator().manual_seed(0)) * 3
    params = [SamplingParams(temperature=1.0), SamplingParams(temperature=1.0, top_p=0.5)]
    probs = sampling_probs(logits, params)
    torch.testing.assert_close(probs[0], logits[0].softmax(-1))
    assert (probs[0] > 0).all() and (probs[1] == 0).any()
