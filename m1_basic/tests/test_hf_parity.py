"""M1 greedy output equals HuggingFace `generate(do_sample=False)` token for token.

Nine prompts (plain code, prose, two chat-templated, non-ASCII, one of ~730 tokens), 64 new tokens each
with EOS ignored so every comparison is full length, on the bundled trained model and on a random-weight
Qwen3 of a different shape (3 layers, 6 query heads over 2 KV heads, head_dim 32, untied embeddings).
"""

import pytest

from m1_basic import LLM, SamplingParams
from shared.tools.reference import parity_prompts
from shared.tools.testing import NEW_TOKENS, hf_reference, tiny_tokenizer


@pytest.fixture(scope="module")
def tiny_llm():
    return LLM(model="tiny-qwen3", device="cpu", dtype="float32")


def test_tiny_greedy_equals_hf(tiny_llm):
    prompts = parity_prompts(tiny_tokenizer())
    outs = tiny_llm.generate(prompts, SamplingParams(temperature=0, max_tokens=NEW_TOKENS, ignore_eos=True))
    expected = hf_reference("tiny-qwen3")
    for i, (out, ref) in enumerate(zip(outs, expected, strict=True)):
        assert out.outputs[0].token_ids == list(ref), f"prompt {i} diverges from HF"
        assert len(ref) == NEW_TOKENS


def test_tiny_output_is_varied(tiny_llm):
    """A trained model: greedy output is not one token repeated (that would hide KV-cache bugs)."""
    for ref in hf_reference("tiny-qwen3"):
        assert len(set(ref)) >= 8


def test_tiny_natural_stop_equals_hf(tiny_llm):
    """With EOS respected, ours stops exactly where HF stops (EOS included in both)."""
    prompts = parity_prompts(tiny_tokenizer())
    outs = tiny_llm.generate(prompts, SamplingParams(temperature=0, max_tokens=NEW_TOKENS))
    expected = hf_reference("tiny-qwen3", NEW_TOKENS, ignore_eos=False)
    for out, ref in zip(outs, expected, strict=True):
        assert out.outputs[0].token_ids == list(ref)
        assert out.outputs[0].finish_reason == ("length" if len(ref) == NEW_TOKENS and ref[-1] not in (0, 2) else "stop")


def test_random_shape_greedy_equals_hf(random_model):
    llm = LLM(model=random_model, device="cpu", dtype="float32")
    prompts = parity_prompts(tiny_tokenizer())
    outs = llm.generate(prompts, SamplingParams(temperature=0, max_tokens=NEW_TOKENS, ignore_eos=True))
    for i, (out, ref) in enumerate(zip(outs, hf_reference(random_model), strict=True)):
        assert out.outputs[0].token_ids == list(ref), f"prompt {i} diverges from HF"
