"""M3 greedy output equals HuggingFace `generate(do_sample=False)` token for token, whatever the batch and block size.

The nine parity prompts (5 to ~730 tokens) run together in one batch of mixed lengths, in shuffled orders,
and arriving while others are already decoding. Their K/V are scattered over blocks of 16, 4 or 1
positions. Every sequence's tokens must equal HF's, which ran each prompt alone. That holds only if
every position's K/V is written to the slot its block table names, and read back from there.
"""

import random

import pytest

from m3_paged import LLM, SamplingParams
from shared.tools.reference import parity_prompts
from shared.tools.testing import NEW_TOKENS, hf_reference, tiny_tokenizer

GREEDY = SamplingParams(temperature=0, max_tokens=NEW_TOKENS, ignore_eos=True)


@pytest.fixture(scope="module")
def tiny_llm():
    return LLM(model="tiny-qwen3", device="cpu", dtype="float32")


@pytest.mark.parametrize("block_size", [16, 4, 1])
def test_mixed_batch_equals_hf(block_size):
    llm = LLM(model="tiny-qwen3", device="cpu", dtype="float32", block_size=block_size)
    outs = llm.generate(parity_prompts(tiny_tokenizer()), GREEDY)
    for i, (out, ref) in enumerate(zip(outs, hf_reference("tiny-qwen3"), strict=True)):
        assert out.outputs[0].token_ids == list(ref), f"prompt {i} diverges from HF in a batch (block_size {block_size})"
    assert llm.engine.stats.summary()["max_running"] == len(outs)  # they really ran together


@pytest.mark.parametrize("seed", [1, 2])
def test_any_arrival_order_and_time_equals_hf(tiny_llm, seed):
    """Shuffled prompts, added one by one between steps, with different max_tokens: all still equal HF."""
    rng = random.Random(seed)
    prompts = parity_prompts(tiny_tokenizer())
    order = list(range(len(prompts)))
    rng.shuffle(order)
    engine, ids, outs = tiny_llm.engine, {}, {}
    for i in order:
        max_tokens = rng.randint(8, NEW_TOKENS)
        rid = engine.add_request(prompts[i], SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True))
        ids[rid] = (i, max_tokens)
        for _ in range(rng.randint(0, 5)):  # let the others decode a few steps before the next arrives
            for out in engine.step():
                if out.finished:
                    outs[out.request_id] = out
    while engine.has_unfinished_requests():
        for out in engine.step():
            if out.finished:
                outs[out.request_id] = out
    ref = hf_reference("tiny-qwen3")
    for rid, (i, max_tokens) in ids.items():
        assert outs[rid].outputs[0].token_ids == list(ref[i][:max_tokens]), f"prompt {i} diverges from HF"


def test_natural_stop_equals_hf(tiny_llm):
    """With EOS respected, sequences leave the batch at different steps; each stops where HF stops."""
    outs = tiny_llm.generate(parity_prompts(tiny_tokenizer()), SamplingParams(temperature=0, max_tokens=NEW_TOKENS))
    for out, ref in zip(outs, hf_reference("tiny-qwen3", NEW_TOKENS, ignore_eos=False), strict=True):
        assert out.outputs[0].token_ids == list(ref)


def test_greedy_n_completions_all_equal_hf(tiny_llm):
    """n = 3 greedy completions share the prompt's blocks and copy the partial one: each equals HF's output."""
    prompts = parity_prompts(tiny_tokenizer())[:4]
    outs = tiny_llm.generate(prompts, SamplingParams(temperature=0, max_tokens=NEW_TOKENS, ignore_eos=True, n=3))
    for out, ref in zip(outs, hf_reference("tiny-qwen3"), strict=False):
        assert [c.index for c in out.outputs] == [0, 1, 2]
        assert all(c.token_ids == list(ref) for c in out.outputs)


def test_random_shape_batch_equals_hf(random_model):
    llm = LLM(model=random_model, device="cpu", dtype="float32", block_size=8)
    outs = llm.generate(parity_prompts(tiny_tokenizer()), GREEDY)
    for i, (out, ref) in enumerate(zip(outs, hf_reference(random_model), strict=True)):
        assert out.outputs[0].token_ids == list(ref), f"prompt {i} diverges from HF"
