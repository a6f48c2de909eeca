"""Milestone against milestone: each engine produces exactly the previous one's outputs, and what a
milestone adds shows up as behaviour (m3 holds more sequences than m2 in the same memory; n > 1 gives the
same completions whether the prompt's K/V is shared or copied)."""

import functools

import pytest

from shared.sampling import SamplingParams
from shared.tools.milestones import ENGINES
from shared.tools.testing import kv_bytes_per_token, prompt_ids
from tests.kept.base import make_llm

MIXED = [
    ("def fibonacci(n):", SamplingParams(temperature=0, max_tokens=40)),
    ("import json\n", SamplingParams(temperature=0.8, top_p=0.9, max_tokens=24, seed=11, ignore_eos=True)),
    ("class Node:\n", SamplingParams(temperature=1.0, top_k=20, max_tokens=32, seed=5)),
    ("The answer is", SamplingParams(temperature=0, max_tokens=7, stop=["\n"])),
]


@functools.cache
def mixed_outputs(name: str):
    prompts, params = zip(*MIXED, strict=True)
    outs = make_llm(name).generate(list(prompts), list(params), use_tqdm=False)
    return [(o.outputs[0].token_ids, o.outputs[0].text, o.outputs[0].finish_reason) for o in outs]


@pytest.mark.parametrize("name", ENGINES[1:])
def test_equals_previous_milestone(name):
    """Greedy, seeded top-p and top-k, and a stop string: token for token, text and finish reason."""
    assert mixed_outputs(name) == mixed_outputs(ENGINES[ENGINES.index(name) - 1])
    assert mixed_outputs(name)[3][2] in ("stop", "length") and "\n" not in mixed_outputs(name)[3][1]


def test_m3_holds_more_than_twice_the_sequences_of_m2_in_the_same_memory():
    """A budget of 3 x max_model_len positions: m2 reserves a full slot per sequence and runs 3 at once;
    m3 takes blocks as the sequences grow and runs all 8 (each needs at most 3 blocks of 16)."""
    budget = 3 * 128 * kv_bytes_per_token()
    prompts = [prompt_ids(10 + i, i) for i in range(8)]
    params = SamplingParams(temperature=0, max_tokens=30, ignore_eos=True)
    runs = {}
    for name in ("m2_batching", "m3_paged"):
        llm = make_llm(name, max_model_len=128, kv_cache_memory_bytes=budget)
        runs[name] = ([o.outputs[0].token_ids for o in llm.generate(prompts, params, use_tqdm=False)],
                      llm.engine.stats.summary())
    (out2, s2), (out3, s3) = runs["m2_batching"], runs["m3_paged"]
    assert s2["max_running"] == 3 and s3["max_running"] == 8 and s3["preemptions"] == 0
    assert s3["kv_mean_utilization"] > 0.7 > 0.4 > s2["kv_mean_utilization"]  # short sequences: up to 15 of 16 wasted
    assert out3 == out2


def test_n_completions_equal_across_m2_and_m3():
    """m2 gives every completion its own slot and runs the prompt once per completion; m3 runs it once and
    shares its blocks. With the same seed the n completions are the same tokens, for a third of the prefill."""
    params = SamplingParams(temperature=1.0, top_k=50, max_tokens=24, ignore_eos=True, n=4, seed=5)
    prompts = ["def main():", "import os\n"]
    runs = {name: make_llm(name, max_model_len=256) for name in ("m2_batching", "m3_paged")}
    outs = {name: [[c.token_ids for c in o.outputs] for o in llm.generate(prompts, params, use_tqdm=False)]
            for name, llm in runs.items()}
    assert outs["m2_batching"] == outs["m3_paged"] and all(len(o) == 4 for o in outs["m3_paged"])
    assert runs["m2_batching"].engine.stats.prefill_tokens == 4 * runs["m3_paged"].engine.stats.prefill_tokens
