"""SamplingParams validation: every bad value is refused with a message that says what is allowed."""

import dataclasses

import pytest
import torch

from shared.sampling import Sampler, SamplingParams, sampling_probs
from shared.tools.testing import sampling_rows


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_tokens": 0}, "max_tokens must be an integer >= 1, got 0"),
        ({"max_tokens": -5}, "max_tokens must be an integer >= 1, got -5"),
        ({"max_tokens": True}, "max_tokens must be an integer >= 1, got True"),
        ({"max_tokens": 4.0}, "max_tokens must be an integer >= 1, got 4.0"),
        ({"top_p": 0.0}, r"top_p must be in \(0, 1\], got 0.0"),
        ({"top_p": 1.5}, r"top_p must be in \(0, 1\], got 1.5"),
        ({"top_p": float("nan")}, "top_p must be a finite number"),
        ({"temperature": -0.1}, "temperature must be >= 0"),
        ({"temperature": float("nan")}, "temperature must be a finite number >= 0"),
        ({"temperature": float("inf")}, "temperature must be a finite number >= 0"),
        ({"temperature": "0.7"}, "temperature must be a finite number >= 0 .*, got '0.7'"),
        ({"top_k": -3}, "top_k must be an integer >= -1"),
        ({"top_k": 2.0}, "top_k must be an integer"),
        ({"n": 2.0}, "n must be an integer >= 1"),
        ({"stop": [""]}, "stop must be a non-empty string"),
        ({"stop": 5}, "stop must be a non-empty string or a list of them, got 5"),
        ({"seed": "x"}, r"seed must be an integer in \[0, 2\*\*64\), got 'x'"),
        ({"seed": -1}, r"seed must be an integer in \[0, 2\*\*64\)"),
        ({"seed": 2**64}, r"seed must be an integer in \[0, 2\*\*64\)"),
        ({"ignore_eos": "yes"}, "ignore_eos must be True or False"),
    ],
)
def test_rejects(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SamplingParams(**kwargs)


def test_defaults_and_normalisation():
    p = SamplingParams()
    assert (p.temperature, p.top_k, p.top_p, p.max_tokens, p.seed, p.ignore_eos, p.stop) == (1.0, 0, 1.0, 16, None, False, None)
    assert SamplingParams(temperature=0).greedy and not p.greedy
    assert SamplingParams(top_k=-1).top_k == 0
    assert SamplingParams(top_k=10**30).top_k == 0  # beyond any vocabulary: every token kept, no int64 overflow
    assert SamplingParams(stop="\n\n").stop == ("\n\n",)
    assert SamplingParams(seed=2**64 - 1).seed == 2**64 - 1


def test_params_are_frozen_and_replace_revalidates():
    p = SamplingParams(stop=["a"], top_k=-1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.max_tokens = 0
    assert dataclasses.replace(p, max_tokens=3).max_tokens == 3
    with pytest.raises(ValueError, match="max_tokens"):
        dataclasses.replace(p, max_tokens=0)


def test_a_temperature_below_the_epsilon_is_greedy():
    assert SamplingParams(temperature=1e-6).greedy and not SamplingParams(temperature=1e-5).greedy
    logits = torch.tensor([[0.5, 3.0, 1.0, -2.0], [2.0, 0.0, 1.9, 1.0]])
    params = [SamplingParams(temperature=1e-40), SamplingParams(temperature=1.0)]  # mixed: not all greedy
    assert torch.isfinite(sampling_probs(logits, params)).all()
    for seed in range(5):
        assert Sampler()(logits, sampling_rows(params, [torch.Generator().manual_seed(seed)] * 2)).token_ids[0].item() == 1
