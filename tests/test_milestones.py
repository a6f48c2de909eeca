"""The cross-milestone suite: every engine in `milestones.ENGINES` is checked against HF and against the one before.

Each engine must (1) equal HF greedy output token for token on the parity prompts, (2) produce exactly
the previous milestone's outputs, greedy and seeded, on a mixed set of requests, and (3) keep the public
API: same constructor, same RequestOutput fields, same errors for bad input.
"""

import functools

import pytest

from shared.sampling import SamplingParams
from shared.tools.milestones import ENGINES, llm_class
from shared.tools.reference import parity_prompts
from shared.tools.testing import NEW_TOKENS, hf_reference, tiny_tokenizer


@functools.cache
def llm(name: str):
    return llm_class(name)(model="tiny-qwen3", device="cpu", dtype="float32")


MIXED = [
    ("def fibonacci(n):", SamplingParams(temperature=0, max_tokens=40)),
    ("import json\n", SamplingParams(temperature=0.8, top_p=0.9, max_tokens=24, seed=11, ignore_eos=True)),
    ("class Node:\n", SamplingParams(temperature=1.0, top_k=20, max_tokens=32, seed=5)),
    ("The answer is", SamplingParams(temperature=0, max_tokens=7, stop=["\n"])),
]


def _summary(outs):
    return [(o.outputs[0].token_ids, o.outputs[0].text, o.outputs[0].finish_reason) for o in outs]


@pytest.mark.parametrize("name", ENGINES)
def test_greedy_equals_hf(name):
    outs = llm(name).generate(parity_prompts(tiny_tokenizer()),
                              SamplingParams(temperature=0, max_tokens=NEW_TOKENS, ignore_eos=True))
    assert [o.outputs[0].token_ids for o in outs] == [list(r) for r in hf_reference("tiny-qwen3")]


@pytest.mark.parametrize("name", [e for e in ENGINES[1:]])
def test_equals_previous_milestone(name):
    prev = ENGINES[ENGINES.index(name) - 1]
    prompts, params = zip(*MIXED, strict=True)
    assert _summary(llm(name).generate(list(prompts), list(params))) == _summary(
        llm(prev).generate(list(prompts), list(params)))


@pytest.mark.parametrize("name", ENGINES)
def test_mixed_requests_are_deterministic(name):
    prompts, params = zip(*MIXED, strict=True)
    first = _summary(llm(name).generate(list(prompts), list(params)))
    assert first == _summary(llm(name).generate(list(prompts), list(params)))
    assert first[3][2] in ("stop", "length") and "\n" not in first[3][1]


@pytest.mark.parametrize("name", ENGINES)
def test_public_api(name):
    out = llm(name).generate(["def a():"], SamplingParams(temperature=0, max_tokens=4))[0]
    assert out.prompt == "def a():" and out.prompt_token_ids == tiny_tokenizer().encode("def a():")
    assert out.finished and len(out.outputs[0].token_ids) == 4 and out.outputs[0].finish_reason == "length"
    assert {"ttft", "tpot", "e2e"} <= {a for a in dir(out.metrics) if not a.startswith("_")}


@pytest.mark.parametrize("name", ENGINES)
@pytest.mark.parametrize(
    ("prompt", "make_params", "message"),
    [
        ("", lambda: SamplingParams(), "prompt is empty"),
        ("x" * 9000, lambda: SamplingParams(), "but the model's context"),
        ("ok", lambda: SamplingParams(max_tokens=0), "max_tokens must be"),
        ("ok", lambda: SamplingParams(top_p=0), "top_p must be in"),
    ],
)
def test_bad_input(name, prompt, make_params, message):
    with pytest.raises(ValueError, match=message):
        llm(name).generate(prompt, make_params())
    assert not llm(name).engine.has_unfinished_requests()
