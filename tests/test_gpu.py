"""GPU checks (run by `python -m shared.tools.gpu_check` on a lent machine); skipped without CUDA."""

import pytest
import torch

from shared.tools.milestones import ENGINES, llm_class
from shared.tools.reference import hf_greedy, load_hf_model, parity_prompts
from shared.tools.testing import tiny_tokenizer

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


@pytest.mark.parametrize("name", ENGINES)
def test_cuda_greedy_equals_hf_cuda(name):
    """float32 on CUDA: our engine and HF on the same device give the same greedy tokens."""
    tok = tiny_tokenizer()
    prompts = parity_prompts(tok)
    hf = load_hf_model("tiny-qwen3", dtype="float32", device="cuda")
    refs = hf_greedy(hf, [tok.encode(p) for p in prompts], 32, ignore_eos=True)
    from shared.sampling import SamplingParams

    llm = llm_class(name)(model="tiny-qwen3", device="cuda", dtype="float32")
    outs = llm.generate(prompts, SamplingParams(temperature=0, max_tokens=32, ignore_eos=True), use_tqdm=False)
    assert [o.outputs[0].token_ids for o in outs] == refs
