"""M3's block pool: the physical KV-cache blocks, a free list, and a reference count per block.

The cache memory is cut into `num_blocks` blocks of `block_size` token positions each. A block is
identified by its index; the pool knows nothing about tensors or sequences. It only answers "give me a
free block" and counts how many block tables hold each block. A block returns to the free list when
its count drops to zero. Counts above one mean the block is shared (copy-on-write, M3; shared prefixes,
M6) and must not be written in place.

This is the operating system's physical page allocator: `kv_cache_manager.py` plays the page tables.
"""

from __future__ import annotations

from collections import deque


class NoFreeBlocksError(RuntimeError):
    """Raised when a block is asked for and none is free: the scheduler's checks should prevent it."""


class BlockPool:
    def __init__(self, num_blocks: int) -> None:
        if num_blocks < 1:
            raise ValueError(f"the KV cache needs at least one block, got num_blocks={num_blocks}")
        self.num_blocks = num_blocks
        self.ref_counts = [0] * num_blocks
        self.free_blocks: deque[int] = deque(range(num_blocks))  # FIFO: a freed block is reused last

    @property
    def num_free(self) -> int:
        return len(self.free_blocks)

    @property
    def num_used(self) -> int:
        return self.num_blocks - len(self.free_blocks)

    def allocate(self) -> int:
        """Take a free block; its reference count becomes 1."""
        if not self.free_blocks:
            raise NoFreeBlocksError(f"all {self.num_blocks} KV-cache blocks are in use")
        block = self.free_blocks.popleft()
        assert self.ref_counts[block] == 0, f"block {block} is on the free list with ref count {self.ref_counts[block]}"
        self.ref_counts[block] = 1
        return block

    def incref(self, block: int) -> None:
        """One more block table holds `block` (a fork shares it)."""
        assert self.ref_counts[block] > 0, f"block {block} is free: only a block in use can be shared"
        self.ref_counts[block] += 1

    def decref(self, block: int) -> None:
        """One block table fewer holds `block`; at zero it is free again."""
        assert self.ref_counts[block] > 0, f"block {block} freed twice"
        self.ref_counts[block] -= 1
        if self.ref_counts[block] == 0:
            self.free_blocks.append(block)

    def is_shared(self, block: int) -> bool:
        return self.ref_counts[block] > 1
