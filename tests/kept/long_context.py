"""What every engine keeps from M4 on, 8K context: tiny-qwen3 has 8192 positions, and greedy output equals HF's for
prompts of about 2K, 4K and 7.9K tokens, on the default backend (sdpa on CPU, triton on CUDA). The prompts are
held-out text (standard-library files the model never trained on), so the continuations are the model's own,
not memorised."""

import pytest
import torch

from shared.sampling import SamplingParams
from shared.tools.reference import held_out_prompt, hf_greedy
from shared.tools.testing import hf_model, tiny_tokenizer
from tests.kept.base import engine_name, llm_class  # noqa: F401

LENGTHS = (2048, 4096, 7900)
NEW = 24


@pytest.mark.slow
def test_long_prompts_equal_hf(engine_name):
    prompts = [held_out_prompt(tiny_tokenizer(), n) for n in LENGTHS]
    want = hf_greedy(hf_model("tiny-qwen3"), prompts, NEW, ignore_eos=True)
    llm = llm_class(engine_name)(model="tiny-qwen3", dtype="float32")
    assert llm.engine.max_model_len == 8192 and llm.engine.backend.name == ("triton" if torch.cuda.is_available() else "sdpa")
    outs = llm.generate(prompts, SamplingParams(temperature=0, max_tokens=NEW, ignore_eos=True), use_tqdm=False)
    assert [list(o.outputs[0].token_ids) for o in outs] == want
    assert [len(o.prompt_token_ids) for o in outs] == list(LENGTHS)


def test_a_prompt_may_fill_the_context_but_not_pass_it(engine_name):
    llm = llm_class(engine_name)(model="tiny-qwen3", dtype="float32")
    ids = held_out_prompt(tiny_tokenizer(), 8191)
    out = llm.generate([ids], SamplingParams(temperature=0, max_tokens=5, ignore_eos=True), use_tqdm=False)[0]
    assert len(out.outputs[0].token_ids) == 1 and out.outputs[0].finish_reason == "length"  # position 8191 is the last
    with pytest.raises(ValueError, match="8192"):
        llm.generate([[*ids, 5]], SamplingParams(max_tokens=1), use_tqdm=False)
