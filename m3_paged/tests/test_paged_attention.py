"""Paged attention: the PyTorch reference and the Triton decode kernel against plain contiguous attention.

Each case scatters a few sequences' K/V over randomly chosen, out-of-order blocks of a random cache, and
computes one decode query per sequence. It then checks the result against `decode_attention` over the same
keys laid out contiguously. The cases cover several block sizes, MHA, GQA (groups of 3 and 4) and MQA,
and context lengths that are and are not multiples of the block size.

On CPU the Triton kernel runs under `TRITON_INTERPRET=1`, so the default test command covers it. The flag must
be set before triton is first imported, which another test module may do indirectly, so the plugin
`shared/tools/pytest_env.py` sets it before collection; the line below covers running this file on its own with
other options. On CUDA the same tests run the kernel natively, and the `gpu` tests add bf16 and fp16.
"""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # must precede triton's first import: @triton.jit reads it then

from m3_paged import LLM, SamplingParams
from m3_paged.attention import PagedMetadata, TorchPagedBackend, TritonPagedBackend, choose_backend
from m3_paged.kv_cache import PagedKVCache
from m3_paged.paged_attention_kernel import paged_decode_attention
from shared.attention import decode_attention
from shared.config import ModelConfig
from shared.tools.reference import parity_prompts
from shared.tools.testing import tiny_tokenizer

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def random_case(block_size: int, heads: int, kv_heads: int, head_dim: int, lens: list[int], dtype=torch.float32, seed=0):
    """A one-layer cache with random contents, sequences of `lens` tokens on shuffled blocks, one query each."""
    g = torch.Generator().manual_seed(seed)
    cfg = ModelConfig(vocab_size=16, hidden_size=heads * head_dim, intermediate_size=16, num_hidden_layers=1,
                      num_attention_heads=heads, num_key_value_heads=kv_heads, head_dim=head_dim, max_position_embeddings=64)
    blocks_needed = [-(-n // block_size) for n in lens]
    num_blocks = sum(blocks_needed) + 3  # a few blocks no sequence owns: they hold garbage that must not be read
    cache = PagedKVCache(cfg, num_blocks * block_size * cfg.kv_bytes_per_token(dtype), block_size, 1, dtype, DEVICE)
    cache.k[0].copy_(torch.randn(cache.k[0].shape, generator=g))
    cache.v[0].copy_(torch.randn(cache.v[0].shape, generator=g))
    order = torch.randperm(num_blocks, generator=g).tolist()
    tables, taken = [], 0
    for nb in blocks_needed:
        tables.append(order[taken:taken + nb])
        taken += nb
    width = max(blocks_needed)
    md = PagedMetadata(
        kv_cache=cache, slot_mapping=torch.empty(0, dtype=torch.long, device=DEVICE),
        num_decodes=len(lens), starts=[n - 1 for n in lens], lens=[1] * len(lens),
        block_tables=torch.tensor([t + [0] * (width - len(t)) for t in tables], dtype=torch.int32, device=DEVICE),
        context_lens=torch.tensor(lens, dtype=torch.int32, device=DEVICE))
    q = torch.randn(len(lens), heads, head_dim, generator=g).to(DEVICE, dtype)
    expected = torch.stack([
        decode_attention(q[i].float(), cache.k[0][t].flatten(0, 1)[:n].float(), cache.v[0][t].flatten(0, 1)[:n].float())
        for i, (t, n) in enumerate(zip(tables, lens))])
    return q, md, expected


def lengths(block_size: int) -> list[int]:
    return [1, block_size - 1 or 1, block_size, block_size + 1, 2 * block_size + 3, 5 * block_size]


@pytest.mark.parametrize("block_size", [1, 4, 16, 32])
@pytest.mark.parametrize(("heads", "kv_heads"), [(4, 4), (8, 2), (6, 2), (4, 1)])
def test_torch_reference_equals_contiguous_attention(block_size, heads, kv_heads):
    q, md, expected = random_case(block_size, heads, kv_heads, 32, lengths(block_size))
    out = TorchPagedBackend().decode(q, 0, md)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("block_size", [4, 8, 16, 32])
@pytest.mark.parametrize(("heads", "kv_heads"), [(4, 4), (8, 2), (6, 2), (4, 1)])
def test_triton_kernel_equals_reference(block_size, heads, kv_heads):
    """fp32: the kernel's online softmax agrees with the two-pass reference to float rounding (1e-5)."""
    q, md, expected = random_case(block_size, heads, kv_heads, 32, lengths(block_size), seed=block_size)
    out = TritonPagedBackend().decode(q, 0, md)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out, TorchPagedBackend().decode(q, 0, md), atol=1e-5, rtol=1e-5)


def test_triton_kernel_real_head_dim_and_long_context():
    """Qwen3-0.6B's head shape (16 query heads on 8 KV heads, head_dim 128) and 300 positions on 16-token blocks."""
    q, md, expected = random_case(16, 16, 8, 128, [300, 17, 64], seed=7)
    torch.testing.assert_close(paged_decode_attention(q, md.kv_cache.k[0], md.kv_cache.v[0], md.block_tables,
                                                      md.context_lens), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_triton_kernel_half_precision_on_cuda(dtype):
    """bf16/fp16 cache and queries, fp32 accumulation inside the kernel: within 2e-2 of the fp32 result."""
    q, md, expected = random_case(16, 16, 8, 128, [1, 15, 16, 17, 500, 2048], dtype=dtype, seed=3)
    out = TritonPagedBackend().decode(q, 0, md)
    torch.testing.assert_close(out.float(), expected, atol=2e-2, rtol=2e-2)


def test_engine_with_the_triton_kernel_equals_the_reference_backend():
    """The whole engine on the Triton backend (interpreted on CPU): the same greedy and seeded n > 1 tokens."""
    prompts = parity_prompts(tiny_tokenizer())[:3]
    params = [SamplingParams(temperature=0, max_tokens=6, ignore_eos=True),
              SamplingParams(temperature=0.9, max_tokens=5, ignore_eos=True, n=2, seed=11),
              SamplingParams(temperature=0, max_tokens=4, ignore_eos=True)]
    runs = []
    for backend in ("torch", "triton"):
        llm = LLM(model="tiny-qwen3", device=DEVICE, dtype="float32", attention_backend=backend, block_size=8)
        assert llm.engine.backend.name == f"paged-{backend}"
        runs.append([[c.token_ids for c in o.outputs] for o in llm.generate(prompts, params, use_tqdm=False)])
    assert runs[0] == runs[1]


def test_backend_choice(monkeypatch):
    assert choose_backend("auto", "cpu").name == "paged-torch"
    if torch.cuda.is_available():
        assert choose_backend("auto", "cuda").name == "paged-triton"
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(ValueError, match="runs on CUDA; on CPU only under TRITON_INTERPRET=1"):
        choose_backend("triton", "cpu")
    with pytest.raises(ValueError, match="attention_backend must be one of"):
        choose_backend("flash", "cpu")
