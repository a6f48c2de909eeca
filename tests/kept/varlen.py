"""Random varlen steps over a paged cache, for the attention tests of `flash` (not a kept module: nothing to collect).

The helpers take the engine's own modules (`attention`, `kv_cache`, `backends` of m4_flash, m5_chunked, ...), so
each engine is tested against its own copy of them.
"""

import random
from types import ModuleType

import torch

from shared.attention import AttentionMetadata
from shared.config import ModelConfig

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def random_step(attention: ModuleType, kv_cache: ModuleType, block_size: int, heads: int, kv_heads: int, head_dim: int,
                shape: list[tuple[int, int]], dtype=torch.float32, seed: int = 0):
    """A one-layer cache (`kv_cache.PagedKVCache`) and one step (`attention.build_metadata`): sequence i has
    shape[i] = (cached context, new tokens).

    Returns (q, k, v, metadata, contiguous): the new tokens' q/k/v [T, heads, d], and for each sequence its
    whole K/V [context + new, kv_heads, d] laid out contiguously, for the reference."""
    g = torch.Generator().manual_seed(seed)
    cfg = ModelConfig(vocab_size=16, hidden_size=heads * head_dim, intermediate_size=16, num_hidden_layers=1,
                      num_attention_heads=heads, num_key_value_heads=kv_heads, head_dim=head_dim, max_position_embeddings=64)
    need = [-(-(c + n) // block_size) for c, n in shape]
    num_blocks = sum(need) + 3  # a few blocks no sequence owns
    cache = kv_cache.PagedKVCache(cfg, num_blocks * block_size * cfg.kv_bytes_per_token(dtype), block_size, 1, dtype, DEVICE)
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
    md = attention.build_metadata(cache, tables, [c for c, _ in shape], [n for _, n in shape], slots, DEVICE)
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


def expected(backends: ModuleType, q: torch.Tensor, md: AttentionMetadata, contiguous) -> torch.Tensor:
    """`backends.naive_attention` of each sequence's queries over its contiguous K/V."""
    cu = md.cu_seqlens_q.tolist()
    return torch.cat([backends.naive_attention(q[cu[i]:cu[i + 1]], kk, vv) for i, (kk, vv) in enumerate(contiguous)])
