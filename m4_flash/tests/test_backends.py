"""Which backend runs, the flash-attn wrapper, and the whole engine on every backend.

flash-attn cannot be installed on these machines (it builds only against CUDA). Its wrapper is tested two
ways: against a stand-in module that implements `flash_attn_varlen_func` as flash-attn's docstring specifies
(paged K/V through `block_table`, causal aligned to the bottom right), which checks what we pass; and against
the real library wherever it is importable.
"""

import importlib.machinery
import os
import sys
import types

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from m4_flash import LLM, SamplingParams
from m4_flash import attention as attention_module
from m4_flash.attention import build_metadata, choose_backend, resolve_backend_name
from m4_flash.backends import FlashAttnBackend, NaiveBackend, naive_attention
from m4_flash.kv_cache import PagedKVCache
from m4_flash.tests.test_flash_attention import expected, mixed_shape, random_step
from shared.loader import load_model
from shared.tools.reference import LONG_PROMPT, our_logits, parity_prompts
from shared.tools.testing import tiny_tokenizer

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
BF16 = torch.bfloat16


def test_auto_on_cpu_is_sdpa_and_visible_on_the_engine(caplog):
    with caplog.at_level("INFO", logger="m4_flash.attention"):
        llm = LLM(model="tiny-qwen3", device="cpu")
    assert llm.engine.backend.name == "sdpa"
    assert "attention backend: sdpa (asked for 'auto' on cpu)" in caplog.text


def test_auto_on_cuda(monkeypatch):
    """flash-attn where it is importable and the cache suits it (blocks of 256k tokens, fp16/bf16), else triton."""
    monkeypatch.setattr(attention_module, "triton_available", lambda: True)
    monkeypatch.setattr(attention_module, "flash_attn_available", lambda: True)
    assert resolve_backend_name("auto", "cuda", 256, BF16) == "flash-attn"
    assert resolve_backend_name("auto", "cuda", 16, BF16) == "triton"  # flash-attn 2 pages are multiples of 256
    assert resolve_backend_name("auto", "cuda", 256, torch.float32) == "triton"
    monkeypatch.setattr(attention_module, "flash_attn_available", lambda: False)
    assert resolve_backend_name("auto", "cuda:0", 256, BF16) == "triton"
    monkeypatch.setattr(attention_module, "triton_available", lambda: False)
    assert resolve_backend_name("auto", "cuda", 16, BF16) == "sdpa"


@pytest.mark.parametrize(("name", "device", "block_size", "dtype", "message"), [
    ("flash", "cpu", 16, torch.float32, "attention_backend must be one of"),
    ("flash-attn", "cuda", 256, BF16, "needs the flash-attn package"),
    ("triton", "cpu", 16, torch.float32, "on CPU only under TRITON_INTERPRET=1"),
])
def test_unusable_backends_say_why(monkeypatch, name, device, block_size, dtype, message):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setattr(attention_module, "flash_attn_available", lambda: False)
    with pytest.raises(ValueError, match=message):
        resolve_backend_name(name, device, block_size, dtype)


@pytest.mark.parametrize(("device", "block_size", "dtype", "message"), [
    ("cpu", 256, BF16, "runs on CUDA only"),
    ("cuda", 16, BF16, "blocks of a multiple of 256 tokens, got block_size=16"),
    ("cuda", 256, torch.float32, "float16 or bfloat16"),
])
def test_flash_attn_limits(monkeypatch, device, block_size, dtype, message):
    monkeypatch.setattr(attention_module, "flash_attn_available", lambda: True)
    with pytest.raises(ValueError, match=message):
        resolve_backend_name("flash-attn", device, block_size, dtype)


def test_triton_needs_triton(monkeypatch):
    monkeypatch.setattr(attention_module, "triton_available", lambda: False)
    with pytest.raises(ValueError, match="needs the triton package"):
        resolve_backend_name("triton", "cuda", 16, BF16)


def test_engine_rejects_an_unknown_backend_in_one_line():
    with pytest.raises(ValueError, match=r"attention_backend must be one of \['auto', 'naive', 'sdpa', 'triton', 'flash-attn'\]"):
        LLM(model="tiny-qwen3", attention_backend="flashinfer")


def stand_in_flash_attn(calls: list):
    """flash_attn_varlen_func as documented: q [total_q, H, d]; with a block_table, k/v are [num_blocks, page, H_kv, d]
    and sequence i's keys are its table's pages, cut at cu_seqlens_k[i+1] - cu_seqlens_k[i]; causal is bottom-right."""

    def flash_attn_varlen_func(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_p=0.0,
                               softmax_scale=None, causal=False, block_table=None, **unused):
        calls.append(dict(causal=causal, max_seqlen_q=max_seqlen_q, max_seqlen_k=max_seqlen_k, scale=softmax_scale))
        assert cu_seqlens_q.dtype == cu_seqlens_k.dtype == block_table.dtype == torch.int32 and causal
        cq, ck = cu_seqlens_q.tolist(), cu_seqlens_k.tolist()
        out = []
        for i in range(len(cq) - 1):
            keys = k[block_table[i].long()].flatten(0, 1)[:ck[i + 1] - ck[i]]
            values = v[block_table[i].long()].flatten(0, 1)[:ck[i + 1] - ck[i]]
            out.append(naive_attention(q[cq[i]:cq[i + 1]], keys, values))
        return torch.cat(out)

    module = types.ModuleType("flash_attn")
    module.__spec__ = importlib.machinery.ModuleSpec("flash_attn", None)
    module.flash_attn_varlen_func = flash_attn_varlen_func
    return module


def test_flash_attn_wrapper_passes_the_varlen_batch(monkeypatch):
    calls: list = []
    monkeypatch.setitem(sys.modules, "flash_attn", stand_in_flash_attn(calls))
    assert attention_module.flash_attn_available()
    q, k, v, md, contiguous = random_step(16, 8, 2, 64, mixed_shape(16, 7), seed=7)
    out = FlashAttnBackend().forward(q, k, v, 0, md)
    torch.testing.assert_close(out, expected(q, md, contiguous), atol=1e-5, rtol=1e-5)
    assert calls == [dict(causal=True, max_seqlen_q=md.max_seqlen_q, max_seqlen_k=md.max_seqlen_k, scale=0.125)]


HAS_FLASH_ATTN = torch.cuda.is_available() and attention_module.flash_attn_available()


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_FLASH_ATTN, reason="needs CUDA and flash-attn")
def test_real_flash_attn_equals_naive():
    shape = [*mixed_shape(256, 3), (0, 700), (600, 1)]
    q, k, v, md, contiguous = random_step(256, 16, 8, 128, shape, dtype=BF16, seed=3)
    out = FlashAttnBackend().forward(q, k, v, 0, md)
    want = expected(q.float(), md, [(kk.float(), vv.float()) for kk, vv in contiguous])
    torch.testing.assert_close(out.float(), want, atol=2e-2, rtol=2e-2)


@pytest.mark.parametrize("backend", ["naive", "sdpa", "triton"])
def test_a_prefill_can_continue_a_cached_sequence(backend):
    """The case M5's chunks and M6's prefix hits need: a prompt run in three pieces (0-17, 17-40, 40-51, the later
    ones attending to the cached earlier ones through the block table) gives the logits of the whole prompt at once."""
    model, config, _ = load_model("tiny-qwen3", torch.float32, DEVICE)
    ids = tiny_tokenizer().encode(LONG_PROMPT)[:51]
    block_size = 8
    cache = PagedKVCache(config, 16 * block_size * config.kv_bytes_per_token(torch.float32), block_size, 64,
                         torch.float32, DEVICE)
    table = [5, 2, 9, 0, 14, 7, 3]  # any blocks, in any order
    impl = choose_backend(backend, DEVICE, block_size)
    pieces = []
    with torch.inference_mode():
        for start, end in ((0, 17), (17, 40), (40, 51)):
            slots = [table[p // block_size] * block_size + p % block_size for p in range(start, end)]
            md = build_metadata(cache, [table[: -(-end // block_size)]], [start], [end - start], slots, DEVICE)
            hidden = model(torch.tensor(ids[start:end], device=DEVICE), torch.arange(start, end, device=DEVICE), impl, md)
            pieces.append(model.compute_logits(hidden))
    torch.testing.assert_close(torch.cat(pieces), our_logits(model, ids), atol=1e-4, rtol=1e-4)


def test_engine_on_every_backend_gives_the_same_tokens():
    """The whole engine, greedy and seeded n > 1, on naive, sdpa and triton (interpreted on CPU)."""
    prompts = parity_prompts(tiny_tokenizer())[:3]
    params = [SamplingParams(temperature=0, max_tokens=6, ignore_eos=True),
              SamplingParams(temperature=0.9, max_tokens=5, ignore_eos=True, n=2, seed=11),
              SamplingParams(temperature=0, max_tokens=4, ignore_eos=True)]
    runs = {}
    for backend in ("naive", "sdpa", "triton"):
        llm = LLM(model="tiny-qwen3", device=DEVICE, dtype="float32", attention_backend=backend, block_size=8)
        assert llm.engine.backend.name == backend
        runs[backend] = [[c.token_ids for c in o.outputs] for o in llm.generate(prompts, params, use_tqdm=False)]
    assert runs["naive"] == runs["sdpa"] == runs["triton"]


def test_naive_backend_reads_through_the_gather():
    """`naive` on one decode equals the formula over the sequence's K/V taken out of the cache by hand."""
    q, k, v, md, contiguous = random_step(4, 4, 2, 64, [(9, 1)], seed=4)
    out = NaiveBackend().forward(q, k, v, 0, md)
    torch.testing.assert_close(out, naive_attention(q, *contiguous[0]), atol=0, rtol=0)
