"""M3's KV cache storage: per layer, one K and one V tensor of shape [num_blocks, block_size, kv_heads, head_dim].

All the cache memory is allocated once, at start-up, from a budget (`kv_cache_memory_bytes`; by default
1 GiB on CPU, 80% of free memory on CUDA). The budget fixes the number of blocks. Which block belongs
to whom is the business of `kv_cache_manager.py`; this file only holds the tensors, writes new K/V at
the slots it is told (the slot mapping), and copies blocks for copy-on-write.

Compare m2_batching/kv_cache.py: a slot per sequence, reserved up front. Here memory is one pool, and
a sequence's tokens can sit in any blocks, in any order.
"""

from __future__ import annotations

import torch

from shared.config import ModelConfig


class PagedKVCache:
    def __init__(self, config: ModelConfig, memory_bytes: int, block_size: int, max_model_len: int,
                 dtype: torch.dtype, device: str) -> None:
        self.block_size = block_size
        self.bytes_per_token = config.kv_bytes_per_token(dtype)
        self.bytes_per_block = self.bytes_per_token * block_size
        self.num_blocks = memory_bytes // self.bytes_per_block
        one_sequence = -(-max_model_len // block_size)
        if self.num_blocks < one_sequence:
            need = one_sequence * self.bytes_per_block
            raise ValueError(
                f"kv_cache_memory_bytes={memory_bytes:,} holds {self.num_blocks:,} blocks of {block_size} tokens "
                f"({self.bytes_per_block:,} bytes each), fewer than one sequence of max_model_len={max_model_len} "
                f"needs ({one_sequence:,}): give at least {need:,} bytes or lower max_model_len")
        shape = (self.num_blocks, block_size, config.num_key_value_heads, config.head_dim)
        # torch.empty: never-written positions are never read (attention stops at each sequence's length)
        self.k = [torch.empty(shape, dtype=dtype, device=device) for _ in range(config.num_hidden_layers)]
        self.v = [torch.empty(shape, dtype=dtype, device=device) for _ in range(config.num_hidden_layers)]

    @property
    def capacity_tokens(self) -> int:
        return self.num_blocks * self.block_size

    def write(self, layer: int, slot_mapping: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        """Store the new tokens' K/V (k, v: [T, kv_heads, head_dim]) at flat slots block * block_size + offset."""
        self.k[layer].view(-1, *k.shape[1:]).index_copy_(0, slot_mapping, k)
        self.v[layer].view(-1, *v.shape[1:]).index_copy_(0, slot_mapping, v)

    def copy_blocks(self, copies: list[tuple[int, int]]) -> None:
        """Copy-on-write: block dst becomes a copy of block src, in every layer."""
        if not copies:
            return
        device = self.k[0].device
        src = torch.tensor([s for s, _ in copies], device=device)
        dst = torch.tensor([d for _, d in copies], device=device)
        for k, v in zip(self.k, self.v):
            k[dst] = k[src]
            v[dst] = v[src]
