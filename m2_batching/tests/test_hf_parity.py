"""M2 greedy output equals HuggingFace `generate(do_sample=False)` token for token, whatever the batch.

The nine parity prompts (5 to ~730 tokens) run together in one batch of mixed lengths, in shuffled
orders, and arriving while others are already decoding. Every sequence's tokens must equal HF's, which
ran each prompt alone. That holds only if no sequence's attention sees another's keys and every
position's K/V lands in the right slot.
"""

import random

import pytest

from m2_batching import LLM, SamplingParams
from shared.tools.reference import parity_prompts
from shared.tools.testing import NEW_TOKENS, hf_reference, tiny_tokenizer

GREEDY = SamplingParams(temperature=0, max_tokens=NEW_TOKENS, ignore_eos=True)


@pytest.fixture(scope="module")
def tiny_llm():
    return LLM(model="tiny-qwen3", device="cpu", dtype="float32")


def test_mixed_batch_equals_hf(tiny_llm):
    outs = tiny_llm.generate(parity_prompts(tiny_tokenizer()), GREEDY)
    assert max(o.metrics.num_prompt_tokens for o in outs) > 10 * min(o.metrics.num_prompt_tokens for o in outs)
    for i, (out, ref) in enumerate(zip(outs, hf_reference("tiny-qwen3"), strict=True)):
        assert out.outputs[0].token_ids == list(ref), f"prompt {i} diverges from HF in a batch"
    assert tiny_llm.engine.stats.summary()["max_running"] == len(outs)  # they really ran together


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


def test_random_shape_batch_equals_hf(random_model):
    llm = LLM(model=random_model, device="cpu", dtype="float32")
    outs = llm.generate(parity_prompts(tiny_tokenizer()), GREEDY)
    for i, (out, ref) in enumerate(zip(outs, hf_reference(random_model), strict=True)):
        assert out.outputs[0].token_ids == list(ref), f"prompt {i} diverges from HF"
