"""What every engine keeps from M4 on: one varlen attention over the paged cache, its backends checked against
`naive`, the backend chosen by name or automatically, and the whole engine on every backend.

Each test resolves the modules of the engine under test (`attention`, `backends`, `kv_cache` of m4_flash,
m5_chunked, ...), so every engine is checked against its own copy of them.

Kernels. A case is a step: some sequences decode (one new token after a cached context), some continue a cached
prefix with a chunk of several tokens, some are whole fresh prompts. Their cached K/V sit on shuffled blocks of
a cache full of random values (blocks no sequence owns hold garbage that must never be read). Each backend
writes the step's new K/V by slot mapping and attends; the outputs must agree with `naive`, and `naive` itself
with the shared causal attention over contiguous K/V. On CPU the Triton kernel runs under `TRITON_INTERPRET=1`
(set by shared/tools/pytest_env.py before triton is imported), on shapes small enough for 2 cores. On CUDA the
same tests run it natively, and the `gpu` tests add bf16 and fp16.

flash-attn cannot be installed on these machines (it builds only against CUDA). Its wrapper is tested two
ways: against a stand-in module that implements `flash_attn_varlen_func` as flash-attn's docstring specifies
(paged K/V through `block_table`, causal aligned to the bottom right), which checks what we pass; and against
the real library wherever it is importable.
"""

import importlib
import importlib.machinery
import os
import random
import sys
import types

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # must precede triton's first import: @triton.jit reads it then

from shared.attention import causal_attention
from shared.loader import load_model
from shared.sampling import SamplingParams
from shared.tools.reference import LONG_PROMPT, our_logits, parity_prompts
from shared.tools.testing import tiny_tokenizer
from tests.kept.base import engine_name, llm_class  # noqa: F401
from tests.kept.varlen import DEVICE, expected, mixed_shape, random_step

BF16 = torch.bfloat16
GQA = [(4, 4), (4, 2), (16, 2)]  # groups of 1, 2 and 8 query heads per KV head


@pytest.fixture(scope="module")
def attention(engine_name):
    """The engine's `attention` module: metadata, backend choice."""
    return importlib.import_module(f"{engine_name}.attention")


@pytest.fixture(scope="module")
def backends(engine_name):
    """The engine's `backends` module: the backend classes by name (`BACKEND_CLASSES`), `naive_attention`."""
    return importlib.import_module(f"{engine_name}.backends")


@pytest.fixture(scope="module")
def kv_cache(engine_name):
    """The engine's `kv_cache` module: `PagedKVCache`."""
    return importlib.import_module(f"{engine_name}.kv_cache")


def run(backend, q, k, v, md) -> torch.Tensor:
    return backend.forward(q, k, v, 0, md)


# Every backend against `naive` on random varlen steps.


@pytest.mark.parametrize("block_size", [1, 16, 64, 256])
@pytest.mark.parametrize(("heads", "kv_heads"), GQA)
def test_naive_equals_shared_causal_attention(attention, backends, kv_cache, block_size, heads, kv_heads):
    """The baseline itself, against the causal attention m1-m3 are tested with, over contiguous K/V."""
    shape = mixed_shape(block_size, 1)
    q, k, v, md, contiguous = random_step(attention, kv_cache, block_size, heads, kv_heads, 64, shape, seed=1)
    out = run(backends.NaiveBackend(), q, k, v, md)
    cu = md.cu_seqlens_q.tolist()
    want = torch.cat([causal_attention(q[cu[i]:cu[i + 1]], kk, vv, q_start=kk.shape[0] - (cu[i + 1] - cu[i]))
                      for i, (kk, vv) in enumerate(contiguous)])
    torch.testing.assert_close(out, want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out, expected(backends, q, md, contiguous), atol=0, rtol=0)  # the gather read the right slots


@pytest.mark.parametrize("backend", ["sdpa", "triton"])
@pytest.mark.parametrize("block_size", [1, 16, 64, 256])
@pytest.mark.parametrize(("heads", "kv_heads"), GQA)
@pytest.mark.parametrize("head_dim", [64, 128])
def test_backend_equals_naive(attention, backends, kv_cache, backend, block_size, heads, kv_heads, head_dim):
    """fp32: online softmax and fused kernels agree with the materialised softmax to float rounding (1e-5)."""
    shape = mixed_shape(block_size, seed=block_size + heads + head_dim)
    q, k, v, md, contiguous = random_step(attention, kv_cache, block_size, heads, kv_heads, head_dim, shape,
                                          seed=block_size + heads)
    want = run(backends.NaiveBackend(), q, k, v, md)
    torch.testing.assert_close(want, expected(backends, q, md, contiguous), atol=0, rtol=0)
    torch.testing.assert_close(run(backends.BACKEND_CLASSES[backend](), q, k, v, md), want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("seed", range(4))
def test_triton_any_order_and_odd_head_counts(attention, backends, kv_cache, seed):
    """Sequences in any order (a one-token chunk amid prompts), 6 query heads on 2 KV heads (a group of 3, padded to 4)
    and head_dim 48 (padded to 64): the kernel masks its padding rows and columns."""
    rng = random.Random(seed)
    shape = mixed_shape(4, seed)
    rng.shuffle(shape)
    q, k, v, md, contiguous = random_step(attention, kv_cache, 4, 6, 2, 48, shape, seed=seed)
    out = run(backends.TritonBackend(), q, k, v, md)
    torch.testing.assert_close(out, expected(backends, q, md, contiguous), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("backend", ["naive", "sdpa", "triton"])
def test_only_the_sequences_positions_are_read(attention, backends, kv_cache, backend):
    """Every cache slot that is not one of a sequence's positions (blocks nobody owns, the unfilled tail of a last
    block) is set to NaN: a backend that read one, even to mask it afterwards, would return NaN."""
    block_size = 16
    q, k, v, md, contiguous = random_step(attention, kv_cache, block_size, 4, 2, 64, [(40, 1), (0, 30), (17, 9), (3, 1)], seed=5)
    owned = torch.zeros(md.kv_cache.capacity_tokens, dtype=torch.bool, device=DEVICE)
    owned[md.gather_index] = True  # positions 0 .. seq_len - 1 of every sequence, the new ones included
    for cache in (md.kv_cache.k[0], md.kv_cache.v[0]):
        cache.view(-1, *cache.shape[2:])[~owned] = float("nan")
    out = run(backends.BACKEND_CLASSES[backend](), q, k, v, md)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, expected(backends, q, md, contiguous), atol=1e-5, rtol=1e-5)


def test_query_tiles_cover_every_query_once(attention, kv_cache):
    _q, _k, _v, md, _ = random_step(attention, kv_cache, 16, 4, 2, 64, [(5, 1), (0, 33), (9, 16), (0, 1)], seed=2)
    seqs, starts = md.query_tiles(16)
    assert list(zip(seqs.tolist(), starts.tolist())) == [(0, 0), (1, 0), (1, 16), (1, 32), (2, 0), (3, 0)]
    assert md.query_tiles(16)[0] is seqs  # built once per step, shared by every layer
    assert md.num_decodes == 1 and md.max_seqlen_q == 33 and md.max_seqlen_k == 33
    assert md.seq_lens.tolist() == [6, 33, 25, 1] and md.cu_seqlens_q.tolist() == [0, 1, 34, 50, 51]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("block_size", [16, 256])
def test_half_precision_on_cuda(attention, backends, kv_cache, dtype, block_size):
    """bf16/fp16 q and cache, fp32 accumulation: within 2e-2 of the fp32 naive result, at Qwen3-0.6B's head shape."""
    shape = [*mixed_shape(block_size, 3), (0, 700), (1500, 1), (900, 300)]
    q, k, v, md, contiguous = random_step(attention, kv_cache, block_size, 16, 8, 128, shape, dtype=dtype, seed=3)
    out = run(backends.TritonBackend(), q, k, v, md)
    want = expected(backends, q.float(), md, [(kk.float(), vv.float()) for kk, vv in contiguous])
    torch.testing.assert_close(out.float(), want, atol=2e-2, rtol=2e-2)
    torch.testing.assert_close(run(backends.SdpaBackend(), q, k, v, md).float(), want, atol=2e-2, rtol=2e-2)


# Which backend runs, the flash-attn wrapper, and the whole engine on every backend.


def test_auto_on_cpu_is_sdpa_and_visible_on_the_engine(engine_name, attention, caplog):
    with caplog.at_level("INFO", logger=attention.__name__):
        llm = llm_class(engine_name)(model="tiny-qwen3", device="cpu")
    assert llm.engine.backend.name == "sdpa"
    assert "attention backend: sdpa (asked for 'auto' on cpu)" in caplog.text


def test_auto_on_cuda(attention, monkeypatch):
    """flash-attn where it is importable and the cache suits it (blocks of 256k tokens, fp16/bf16), else triton."""
    monkeypatch.setattr(attention, "triton_available", lambda: True)
    monkeypatch.setattr(attention, "flash_attn_available", lambda: True)
    assert attention.resolve_backend_name("auto", "cuda", 256, BF16) == "flash-attn"
    assert attention.resolve_backend_name("auto", "cuda", 16, BF16) == "triton"  # flash-attn 2 pages are multiples of 256
    assert attention.resolve_backend_name("auto", "cuda", 256, torch.float32) == "triton"
    monkeypatch.setattr(attention, "flash_attn_available", lambda: False)
    assert attention.resolve_backend_name("auto", "cuda:0", 256, BF16) == "triton"
    monkeypatch.setattr(attention, "triton_available", lambda: False)
    assert attention.resolve_backend_name("auto", "cuda", 16, BF16) == "sdpa"


@pytest.mark.parametrize(("name", "device", "block_size", "dtype", "message"), [
    ("flash", "cpu", 16, torch.float32, "attention_backend must be one of"),
    ("flash-attn", "cuda", 256, BF16, "needs the flash-attn package"),
    ("triton", "cpu", 16, torch.float32, "on CPU only under TRITON_INTERPRET=1"),
])
def test_unusable_backends_say_why(attention, monkeypatch, name, device, block_size, dtype, message):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setattr(attention, "flash_attn_available", lambda: False)
    with pytest.raises(ValueError, match=message):
        attention.resolve_backend_name(name, device, block_size, dtype)


@pytest.mark.parametrize(("device", "block_size", "dtype", "message"), [
    ("cpu", 256, BF16, "runs on CUDA only"),
    ("cuda", 16, BF16, "blocks of a multiple of 256 tokens, got block_size=16"),
    ("cuda", 256, torch.float32, "float16 or bfloat16"),
])
def test_flash_attn_limits(attention, monkeypatch, device, block_size, dtype, message):
    monkeypatch.setattr(attention, "flash_attn_available", lambda: True)
    with pytest.raises(ValueError, match=message):
        attention.resolve_backend_name("flash-attn", device, block_size, dtype)


def test_triton_needs_triton(attention, monkeypatch):
    monkeypatch.setattr(attention, "triton_available", lambda: False)
    with pytest.raises(ValueError, match="needs the triton package"):
        attention.resolve_backend_name("triton", "cuda", 16, BF16)


def test_engine_rejects_an_unknown_backend_in_one_line(engine_name):
    with pytest.raises(ValueError, match=r"attention_backend must be one of \['auto', 'naive', 'sdpa', 'triton', 'flash-attn'\]"):
        llm_class(engine_name)(model="tiny-qwen3", attention_backend="flashinfer")


def stand_in_flash_attn(backends, calls: list):
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
            out.append(backends.naive_attention(q[cq[i]:cq[i + 1]], keys, values))
        return torch.cat(out)

    module = types.ModuleType("flash_attn")
    module.__spec__ = importlib.machinery.ModuleSpec("flash_attn", None)
    module.flash_attn_varlen_func = flash_attn_varlen_func
    return module


def test_flash_attn_wrapper_passes_the_varlen_batch(attention, backends, kv_cache, monkeypatch):
    calls: list = []
    monkeypatch.setitem(sys.modules, "flash_attn", stand_in_flash_attn(backends, calls))
    assert attention.flash_attn_available()
    q, k, v, md, contiguous = random_step(attention, kv_cache, 16, 8, 2, 64, mixed_shape(16, 7), seed=7)
    out = backends.FlashAttnBackend().forward(q, k, v, 0, md)
    torch.testing.assert_close(out, expected(backends, q, md, contiguous), atol=1e-5, rtol=1e-5)
    assert calls == [dict(causal=True, max_seqlen_q=md.max_seqlen_q, max_seqlen_k=md.max_seqlen_k, scale=0.125)]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA and flash-attn")
def test_real_flash_attn_equals_naive(attention, backends, kv_cache):
    if not attention.flash_attn_available():
        pytest.skip("needs CUDA and flash-attn")
    shape = [*mixed_shape(256, 3), (0, 700), (600, 1)]
    q, k, v, md, contiguous = random_step(attention, kv_cache, 256, 16, 8, 128, shape, dtype=BF16, seed=3)
    out = backends.FlashAttnBackend().forward(q, k, v, 0, md)
    want = expected(backends, q.float(), md, [(kk.float(), vv.float()) for kk, vv in contiguous])
    torch.testing.assert_close(out.float(), want, atol=2e-2, rtol=2e-2)


@pytest.mark.parametrize("backend", ["naive", "sdpa", "triton"])
def test_a_prefill_can_continue_a_cached_sequence(attention, kv_cache, backend):
    """The case M5's chunks and M6's prefix hits need: a prompt run in three pieces (0-17, 17-40, 40-51, the later
    ones attending to the cached earlier ones through the block table) gives the logits of the whole prompt at once."""
    model, config, _ = load_model("tiny-qwen3", torch.float32, DEVICE)
    ids = tiny_tokenizer().encode(LONG_PROMPT)[:51]
    block_size = 8
    cache = kv_cache.PagedKVCache(config, 16 * block_size * config.kv_bytes_per_token(torch.float32), block_size, 64,
                                  torch.float32, DEVICE)
    table = [5, 2, 9, 0, 14, 7, 3]  # any blocks, in any order
    impl = attention.choose_backend(backend, DEVICE, block_size)
    pieces = []
    with torch.inference_mode():
        for start, end in ((0, 17), (17, 40), (40, 51)):
            slots = [table[p // block_size] * block_size + p % block_size for p in range(start, end)]
            md = attention.build_metadata(cache, [table[: -(-end // block_size)]], [start], [end - start], slots, DEVICE)
            hidden = model(torch.tensor(ids[start:end], device=DEVICE), torch.arange(start, end, device=DEVICE), impl, md)
            pieces.append(model.compute_logits(hidden))
    torch.testing.assert_close(torch.cat(pieces), our_logits(model, ids), atol=1e-4, rtol=1e-4)


def test_engine_on_every_backend_gives_the_same_tokens(engine_name):
    """The whole engine, greedy and seeded n > 1, on naive, sdpa and triton (interpreted on CPU)."""
    prompts = parity_prompts(tiny_tokenizer())[:3]
    params = [SamplingParams(temperature=0, max_tokens=6, ignore_eos=True),
              SamplingParams(temperature=0.9, max_tokens=5, ignore_eos=True, n=2, seed=11),
              SamplingParams(temperature=0, max_tokens=4, ignore_eos=True)]
    runs = {}
    for backend in ("naive", "sdpa", "triton"):
        llm = llm_class(engine_name)(model="tiny-qwen3", device=DEVICE, dtype="float32", attention_backend=backend, block_size=8)
        assert llm.engine.backend.name == backend
        runs[backend] = [[c.token_ids for c in o.outputs] for o in llm.generate(prompts, params, use_tqdm=False)]
    assert runs["naive"] == runs["sdpa"] == runs["triton"]


def test_naive_backend_reads_through_the_gather(attention, backends, kv_cache):
    """`naive` on one decode equals the formula over the sequence's K/V taken out of the cache by hand."""
    q, k, v, md, contiguous = random_step(attention, kv_cache, 4, 4, 2, 64, [(9, 1)], seed=4)
    out = backends.NaiveBackend().forward(q, k, v, 0, md)
    torch.testing.assert_close(out, backends.naive_attention(q, *contiguous[0]), atol=0, rtol=0)
