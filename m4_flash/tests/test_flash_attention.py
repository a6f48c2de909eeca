"""Every attention backend against `naive` on random varlen batches over a paged cache.

A case is a step: some sequences decode (one new token after a cached context), some continue a cached
prefix with a chunk of several tokens, some are whole fresh prompts. Their cached K/V sit on shuffled
blocks of a cache full of random values (blocks no sequence owns hold garbage that must never be read).
Each backend writes the step's new K/V by slot mapping and attends; the outputs must agree with `naive`,
and `naive` itself with the shared causal attention over contiguous K/V.

On CPU the Triton kernel runs under `TRITON_INTERPRET=1` (set by shared/tools/pytest_env.py before triton is
imported), on shapes small enough for 2 cores. On CUDA the same tests run it natively, and the `gpu` tests add
bf16 and fp16.
"""

import os
import random

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # must precede triton's first import: @triton.jit reads it then

from m4_flash.attention import FlashMetadata, build_metadata
from m4_flash.backends import NaiveBackend, SdpaBackend, TritonBackend, naive_attention
from m4_flash.kv_cache import PagedKVCache
from shared.attention import causal_attention
from shared.config import ModelConfig

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def random_step(block_size: int, heads: int, kv_heads: int, head_dim: int, shape: list[tuple[int, int]],
                dtype=torch.float32, seed: int = 0):
    """A one-layer cache and one step: sequence i has shape[i] = (cached context, new tokens).

    Returns (q, k, v, metadata, contiguous): the new tokens' q/k/v [T, heads, d], and for each sequence its
    whole K/V [context + new, kv_heads, d] laid out contiguously, for the reference."""
    g = torch.Generator().manual_seed(seed)
    cfg = ModelConfig(vocab_size=16, hidden_size=heads * head_dim, intermediate_size=16, num_hidden_layers=1,
                      num_attention_heads=heads, num_key_value_heads=kv_heads, head_dim=head_dim, max_position_embeddings=64)
    need = [-(-(c + n) // block_size) for c, n in shape]
    num_blocks = sum(need) + 3  # a few blocks no sequence owns
    cache = PagedKVCache(cfg, num_blocks * block_size * cfg.kv_bytes_per_token(dtype), block_size, 1, dtype, DEVICE)
    cache.k[0].copy_(torch.randn(cache.k[0].shape, generator=g))
    cache.v[0].copy_(torch.randn(cache.v[0].shape, generator=g))
    order = torch.randperm(num_blocks, generator=g).tolist()
    tables, slots, contiguous, taken = [], [], [], 0
    for (context, new), nb in zip(shape, need):
        table = order[taken:taken + nb]
        taken += nb
        tables.append(table)
        positions = range(context, context + new)
        slots += [table[p // block_size] * block_size + p % block_size for p in positions]
        cached = torch.tensor([table[p // block_size] * block_size + p % block_size for p in range(context)], dtype=torch.long)
        contiguous.append((cache.k[0].flatten(0, 1)[cached.to(DEVICE)], cache.v[0].flatten(0, 1)[cached.to(DEVICE)]))
    total = sum(n for _, n in shape)
    q = torch.randn(total, heads, head_dim, generator=g).to(DEVICE, dtype)
    k = torch.randn(total, kv_heads, head_dim, generator=g).to(DEVICE, dtype)
    v = torch.randn(total, kv_heads, head_dim, generator=g).to(DEVICE, dtype)
    row = 0
    for i, (_, new) in enumerate(shape):  # the reference's K/V: the cached context, then the new tokens
        ck, cv = contiguous[i]
        contiguous[i] = (torch.cat([ck, k[row:row + new]]), torch.cat([cv, v[row:row + new]]))
        row += new
    md = build_metadata(cache, tables, [c for c, _ in shape], [n for _, n in shape], slots, DEVICE)
    return q, k, v, md, contiguous


def mixed_shape(block_size: int, seed: int) -> list[tuple[int, int]]:
    """Decodes first (as the scheduler orders them), then chunks continuing a cached prefix, then whole prompts.
    Contexts straddle block boundaries: just below, on and just above a multiple of the block size."""
    rng = random.Random(seed)
    edge = max(block_size, 8)
    decodes = [(c, 1) for c in (1, edge - 1, edge, edge + 1, 2 * edge + rng.randrange(5))]
    chunks = [(rng.randrange(1, 2 * edge), rng.randrange(2, 40)) for _ in range(3)] + [(edge, edge)]
    prompts = [(0, 1), (0, rng.randrange(20, 70)), (0, edge + 3)]
    return decodes + chunks + prompts


def expected(q: torch.Tensor, md: FlashMetadata, contiguous) -> torch.Tensor:
    cu = md.cu_seqlens_q.tolist()
    return torch.cat([naive_attention(q[cu[i]:cu[i + 1]], kk, vv) for i, (kk, vv) in enumerate(contiguous)])


def run(backend, q, k, v, md) -> torch.Tensor:
    return backend.forward(q, k, v, 0, md)


GQA = [(4, 4), (4, 2), (16, 2)]  # groups of 1, 2 and 8 query heads per KV head


@pytest.mark.parametrize("block_size", [1, 16, 64, 256])
@pytest.mark.parametrize(("heads", "kv_heads"), GQA)
def test_naive_equals_shared_causal_attention(block_size, heads, kv_heads):
    """The baseline itself, against the causal attention m1-m3 are tested with, over contiguous K/V."""
    q, k, v, md, contiguous = random_step(block_size, heads, kv_heads, 64, mixed_shape(block_size, 1), seed=1)
    out = run(NaiveBackend(), q, k, v, md)
    cu = md.cu_seqlens_q.tolist()
    want = torch.cat([causal_attention(q[cu[i]:cu[i + 1]], kk, vv, q_start=kk.shape[0] - (cu[i + 1] - cu[i]))
                      for i, (kk, vv) in enumerate(contiguous)])
    torch.testing.assert_close(out, want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out, expected(q, md, contiguous), atol=0, rtol=0)  # the gather read the right slots


@pytest.mark.parametrize("backend", [SdpaBackend, TritonBackend])
@pytest.mark.parametrize("block_size", [1, 16, 64, 256])
@pytest.mark.parametrize(("heads", "kv_heads"), GQA)
@pytest.mark.parametrize("head_dim", [64, 128])
def test_backend_equals_naive(backend, block_size, heads, kv_heads, head_dim):
    """fp32: online softmax and fused kernels agree with the materialised softmax to float rounding (1e-5)."""
    shape = mixed_shape(block_size, seed=block_size + heads + head_dim)
    q, k, v, md, contiguous = random_step(block_size, heads, kv_heads, head_dim, shape, seed=block_size + heads)
    want = run(NaiveBackend(), q, k, v, md)
    torch.testing.assert_close(want, expected(q, md, contiguous), atol=0, rtol=0)
    torch.testing.assert_close(run(backend(), q, k, v, md), want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("seed", range(4))
def test_triton_any_order_and_odd_head_counts(seed):
    """Sequences in any order (a one-token chunk amid prompts), 6 query heads on 2 KV heads (a group of 3, padded to 4)
    and head_dim 48 (padded to 64): the kernel masks its padding rows and columns."""
    rng = random.Random(seed)
    shape = mixed_shape(4, seed)
    rng.shuffle(shape)
    q, k, v, md, contiguous = random_step(4, 6, 2, 48, shape, seed=seed)
    torch.testing.assert_close(run(TritonBackend(), q, k, v, md), expected(q, md, contiguous), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("backend", [NaiveBackend, SdpaBackend, TritonBackend])
def test_only_the_sequences_positions_are_read(backend):
    """Every cache slot that is not one of a sequence's positions (blocks nobody owns, the unfilled tail of a last
    block) is set to NaN: a backend that read one, even to mask it afterwards, would return NaN."""
    block_size = 16
    q, k, v, md, contiguous = random_step(block_size, 4, 2, 64, [(40, 1), (0, 30), (17, 9), (3, 1)], seed=5)
    owned = torch.zeros(md.kv_cache.capacity_tokens, dtype=torch.bool, device=DEVICE)
    owned[md.gather_index] = True  # positions 0 .. seq_len - 1 of every sequence, the new ones included
    for cache in (md.kv_cache.k[0], md.kv_cache.v[0]):
        cache.view(-1, *cache.shape[2:])[~owned] = float("nan")
    out = run(backend(), q, k, v, md)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, expected(q, md, contiguous), atol=1e-5, rtol=1e-5)


def test_query_tiles_cover_every_query_once():
    _q, _k, _v, md, _ = random_step(16, 4, 2, 64, [(5, 1), (0, 33), (9, 16), (0, 1)], seed=2)
    seqs, starts = md.query_tiles(16)
    assert list(zip(seqs.tolist(), starts.tolist())) == [(0, 0), (1, 0), (1, 16), (1, 32), (2, 0), (3, 0)]
    assert md.query_tiles(16)[0] is seqs  # built once per step, shared by every layer
    assert md.num_decodes == 1 and md.max_seqlen_q == 33 and md.max_seqlen_k == 33
    assert md.seq_lens.tolist() == [6, 33, 25, 1] and md.cu_seqlens_q.tolist() == [0, 1, 34, 50, 51]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("block_size", [16, 256])
def test_half_precision_on_cuda(dtype, block_size):
    """bf16/fp16 q and cache, fp32 accumulation: within 2e-2 of the fp32 naive result, at Qwen3-0.6B's head shape."""
    shape = [*mixed_shape(block_size, 3), (0, 700), (1500, 1), (900, 300)]
    q, k, v, md, contiguous = random_step(block_size, 16, 8, 128, shape, dtype=dtype, seed=3)
    out = run(TritonBackend(), q, k, v, md)
    want = expected(q.float(), md, [(kk.float(), vv.float()) for kk, vv in contiguous])
    torch.testing.assert_close(out.float(), want, atol=2e-2, rtol=2e-2)
    torch.testing.assert_close(run(SdpaBackend(), q, k, v, md).float(), want, atol=2e-2, rtol=2e-2)
