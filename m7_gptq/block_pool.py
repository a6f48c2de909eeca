"""M6's block pool: m3's blocks and reference counts, plus a cache of full blocks by content hash.

A full block's K/V depend only on the tokens up to its end (attention is causal), so a block is named by a
hash of its own tokens chained to its parent block's hash (`prefix_hash.py`). The pool keeps
`cached: hash -> block` for blocks whose K/V are complete, and every block remembers the hash it is
cached under.

What changed from m5 is what "free" means. A block whose reference count drops to zero keeps its K/V and
its hash: it waits in the free queue, still findable by hash, until a new block is needed. The free queue
is least recently used first: `allocate` takes the block freed longest ago and only then drops its hash
(an eviction). A cache hit on a free block takes it out of the queue (`touch`). A block in use is never
evicted, because only free blocks are in the queue.

A freed block without a hash (a partly filled tail, or a cache miss that duplicated a cached block) holds
nothing anyone can find, so it goes to the front of the queue and is reused first: cached blocks stay
longer at no cost. (vLLM appended every freed block at the back until 2026, vllm-project/vllm#42656.)

This is the operating system's page cache: freed pages stay readable until memory is needed.
"""

from __future__ import annotations

from collections import OrderedDict

from m7_gptq.prefix_hash import BlockHash

BlockKey = tuple[BlockHash, tuple[int, ...]]  # (parent hash, token ids): what a block's hash was computed from


class NoFreeBlocksError(RuntimeError):
    """Raised when a block is asked for and none is free: the scheduler's checks should prevent it."""


class BlockPool:
    def __init__(self, num_blocks: int) -> None:
        if num_blocks < 1:
            raise ValueError(f"the KV cache needs at least one block, got num_blocks={num_blocks}")
        self.num_blocks = num_blocks
        self.ref_counts = [0] * num_blocks
        self.block_hashes: list[BlockHash | None] = [None] * num_blocks  # the hash a block is cached under
        self.block_keys: list[BlockKey | None] = [None] * num_blocks  # checked on a hit (a collision is no hit)
        self.cached: dict[BlockHash, int] = {}  # hash -> the block holding those tokens' K/V
        # free blocks, least recently freed first (an OrderedDict removes a block from the middle in O(1))
        self.free_queue: OrderedDict[int, None] = OrderedDict.fromkeys(range(num_blocks))
        self.num_evictions = 0  # cached blocks whose hash was dropped to reuse them
        self.num_collisions = 0  # hash matches whose parent or tokens differed (never seen with SHA-256)

    @property
    def num_free(self) -> int:
        return len(self.free_queue)

    @property
    def num_used(self) -> int:
        return self.num_blocks - len(self.free_queue)

    @property
    def num_cached_free(self) -> int:
        """Free blocks that still hold a findable prefix (evictable)."""
        return sum(1 for b in self.free_queue if self.block_hashes[b] is not None)

    def allocate(self) -> int:
        """Take the least recently freed block; if it was cached, evict it. Its reference count becomes 1."""
        if not self.free_queue:
            raise NoFreeBlocksError(f"all {self.num_blocks} KV-cache blocks are in use")
        block, _ = self.free_queue.popitem(last=False)
        assert self.ref_counts[block] == 0, f"block {block} is on the free list with ref count {self.ref_counts[block]}"
        if self.block_hashes[block] is not None:
            self._uncache(block)
            self.num_evictions += 1
        self.ref_counts[block] = 1
        return block

    def lookup(self, block_hash: BlockHash, key: BlockKey) -> int | None:
        """The block cached under `block_hash` (in use or free) if it was computed from the same parent and
        tokens, else None. A hash match with another key is a collision: counted, and no hit."""
        block = self.cached.get(block_hash)
        if block is not None and self.block_keys[block] != key:
            self.num_collisions += 1
            return None
        return block

    def touch(self, block: int) -> None:
        """A cache hit: one more block table holds `block`; a free one leaves the free queue (not evicted)."""
        if self.ref_counts[block] == 0:
            del self.free_queue[block]
        self.ref_counts[block] += 1

    def cache(self, block: int, block_hash: BlockHash, key: BlockKey) -> bool:
        """`block` is full and its K/V, computed from `key`, are in the cache: make it findable by `block_hash`.
        If a block with the same key is cached already (two requests computed the same prefix at once), keep
        that one and leave this block unnamed. Returns False only for a collision (the hash is taken by another
        key): then the caller must not cache this sequence's later blocks, whose hashes chain through it."""
        assert self.ref_counts[block] > 0, f"block {block} is free: only a block in use can be cached"
        other = self.cached.get(block_hash)
        if other is not None:
            if self.block_keys[other] != key:
                self.num_collisions += 1
                return False
            return True
        assert self.block_hashes[block] is None, f"block {block} is cached twice"
        self.cached[block_hash] = block
        self.block_hashes[block] = block_hash
        self.block_keys[block] = key
        return True

    def incref(self, block: int) -> None:
        """One more block table holds `block` (a fork shares it)."""
        assert self.ref_counts[block] > 0, f"block {block} is free: only a block in use can be shared"
        self.ref_counts[block] += 1

    def decref(self, block: int) -> None:
        """One block table fewer holds `block`. At zero it is free: a cached block goes to the back of the queue
        (most recently used, evicted last), a block without a hash to the front (reused first)."""
        assert self.ref_counts[block] > 0, f"block {block} freed twice"
        self.ref_counts[block] -= 1
        if self.ref_counts[block] == 0:
            self.free_queue[block] = None
            if self.block_hashes[block] is None:
                self.free_queue.move_to_end(block, last=False)

    def is_shared(self, block: int) -> bool:
        return self.ref_counts[block] > 1

    def _uncache(self, block: int) -> None:
        del self.cached[self.block_hashes[block]]
        self.block_hashes[block] = self.block_keys[block] = None

    def reset_cache(self) -> int:
        """Forget every cached prefix of a free block (e.g. after new weights are loaded). Returns how many."""
        dropped = [b for b in self.free_queue if self.block_hashes[b] is not None]
        for block in dropped:
            self._uncache(block)
        return len(dropped)
