"""SamplingParams validation: every bad value is refused with a message that says what is allowed."""

import pytest

from shared.sampling import SamplingParams


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_tokens": 0}, "max_tokens must be an integer >= 1, got 0"),
        ({"max_tokens": -5}, "max_tokens must be an integer >= 1, got -5"),
        ({"top_p": 0.0}, r"top_p must be in \(0, 1\], got 0.0"),
        ({"top_p": 1.5}, r"top_p must be in \(0, 1\], got 1.5"),
        ({"temperature": -0.1}, "temperature must be >= 0"),
        ({"top_k": -3}, "top_k must be an integer >= 0"),
        ({"stop": [""]}, "stop must be a non-empty string"),
        ({"seed": "x"}, "seed must be an integer"),
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
    assert SamplingParams(stop="\n\n").stop == ["\n\n"]
