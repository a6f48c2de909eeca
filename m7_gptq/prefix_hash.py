"""M6's block identity: a chained hash of a full block's tokens and everything before them.

The K/V of position p depend on tokens 0..p and nothing after (causal attention), so a full block's K/V
are determined by the whole prefix up to its end. Naming a block by its own tokens is not enough (the
same 16 tokens after a different prefix have different K/V); naming it by the whole prefix would cost
O(length) per block. The chain does both: block i's hash covers block i-1's hash and block i's tokens,

    hash_0 = H(ROOT, tokens[0:B], extra)        hash_i = H(hash_{i-1}, tokens[iB:(i+1)B])

so equal hashes mean equal prefixes, and a sequence's hashes are computed once, block by block, as it
grows. The hashes of a prompt's blocks are the path through a trie whose edges are blocks (a block-
granular radix tree, stored flat as a dict).

H is SHA-256 over a canonical byte encoding (the parent's 32-byte digest, the token count, each token id
as a little-endian int64, then `extra`), as vLLM's default `sha256`. A collision needs about 2^128
hashes to find by chance; the block pool also compares a hit's token ids (block_pool.py), so a
collision of one block cannot hand out wrong K/V. `extra` is for anything else the K/V depend on
(vLLM: LoRA adapter, multimodal inputs, a per-tenant cache salt); here one engine serves one model, so
it is empty unless a caller asks.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Callable, Sequence

BlockHash = bytes
ROOT: BlockHash = bytes(32)  # the parent of every sequence's first block
HashFn = Callable[[BlockHash, Sequence[int], bytes], BlockHash]


def hash_block(parent: BlockHash, token_ids: Sequence[int], extra: bytes = b"") -> BlockHash:
    """SHA-256 of (parent digest, token count, token ids as little-endian int64, extra)."""
    data = struct.pack(f"<I{len(token_ids)}q", len(token_ids), *token_ids)
    return hashlib.sha256(parent + data + extra).digest()


def extend_hashes(hashes: list[BlockHash], token_ids: Sequence[int], block_size: int,
                  hash_fn: HashFn = hash_block, extra: bytes = b"") -> list[BlockHash]:
    """Append the hashes of the full blocks of `token_ids` that `hashes` does not have yet; returns `hashes`.
    `extra` goes into the first block's hash (so it changes every block's hash after it)."""
    for i in range(len(hashes), len(token_ids) // block_size):
        parent = hashes[-1] if hashes else ROOT
        hashes.append(hash_fn(parent, token_ids[i * block_size:(i + 1) * block_size], b"" if hashes else extra))
    return hashes
