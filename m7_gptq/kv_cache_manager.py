"""M6's KV cache manager: m5's block tables, where a new sequence starts from the cached blocks of its prefix.

Position p of a sequence lives in logical block p // block_size, at offset p % block_size. The block
table says which physical block that is. Blocks are handed out per scheduled chunk, `can_allocate_slots`
then `allocate_slots`, as in m5.

What changed from m5: every full block whose K/V are computed is named by a chained hash of its prefix
(`prefix_hash.py`) and kept findable in the block pool (`block_pool.py`), even after its sequence is gone,
until the block is needed again (LRU eviction). When the scheduler admits a sequence it first asks
`find_cached(seq)`: the longest run of its leading full blocks whose hashes are cached. Those blocks go
straight into the new block table (their reference counts rise), the sequence starts with
`len(hits) * block_size` positions already computed, and only the rest of the prompt runs, through m4's
context-aware attention and m5's chunks. At most `(num_tokens - 1) // block_size` blocks are taken, so
the last token always runs: its logits give the first output token. A preempted sequence comes back the
same way, and usually finds most of its own blocks still cached.

Blocks are cached after the step that fills them (`mark_computed`), prompt and generated tokens alike, so
turn 2 of a chat finds turn 1's prompt and answer. Copy-on-write is m3's and never meets a cached block:
a cached block is full, and nobody writes into a full block.

Statistics, as vLLM reports them: tokens queried (each admitted sequence's length), tokens hit, and
evictions; `take_stats` hands them to the engine's step record.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from m7_gptq.block_pool import BlockPool
from m7_gptq.prefix_hash import ROOT, BlockHash, HashFn, extend_hashes, hash_block
from shared.request import Sequence


@dataclass
class PrefixCacheStats:
    """Counted since the last `take_stats()`: tokens of the sequences admitted (a preempted one again when it
    comes back), of them the tokens found cached, and evictions."""

    queried_tokens: int = 0
    hit_tokens: int = 0
    evictions: int = 0  # cached blocks reused for something else


class KVCacheManager:
    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True,
                 hash_fn: HashFn = hash_block) -> None:
        self.block_size = block_size
        self.pool = BlockPool(num_blocks)
        self.enable_prefix_caching = enable_prefix_caching
        self.hash_fn = hash_fn  # a test injects a colliding one
        self._hashes: dict[int, list[BlockHash]] = {}  # seq_id -> hashes of its full blocks, kept across preemption
        self._num_cached: dict[int, int] = {}  # seq_id -> leading blocks of its table already in the pool's cache
        self.stats = PrefixCacheStats()
        self._evictions_seen = 0
        self.block_tables: dict[int, list[int]] = {}  # seq_id -> physical block of each logical block
        self._computed: dict[int, int] = {}  # seq_id -> positions whose K/V are in the cache (see num_computed_tokens)
        self.pending_copies: list[tuple[int, int]] = []  # copy-on-write (src, dst) for the next forward pass

    def blocks_for(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)  # ceil

    # -- the scheduler's questions and the operations they guard -------------------------------------
    def find_cached(self, seq: Sequence) -> list[int]:
        """The cached blocks that hold `seq`'s first positions: the longest run of its leading full blocks
        found by hash (and the same parent and tokens), leaving at least its last token to compute. Changes
        nothing: `allocate_slots(seq, n, hits)` takes them. Empty with prefix caching off."""
        if not self.enable_prefix_caching or seq.seq_id in self.block_tables:
            return []
        token_ids, size = seq.token_ids, self.block_size
        hashes = self._block_hashes(seq, token_ids)
        hits: list[int] = []
        for i in range((seq.num_tokens - 1) // size):
            parent = hashes[i - 1] if i else ROOT
            block = self.pool.lookup(hashes[i], (parent, tuple(token_ids[i * size:(i + 1) * size])))
            if block is None:
                break
            hits.append(block)
        return hits

    def num_cached_tokens(self, seq: Sequence) -> int:
        """How many of a waiting `seq`'s leading positions are cached now, by hash alone (for ordering only)."""
        if not self.enable_prefix_caching:
            return 0
        hashes = self._block_hashes(seq)
        n = 0
        while n < len(hashes) and hashes[n] in self.pool.cached:
            n += 1
        return n * self.block_size

    def _block_hashes(self, seq: Sequence, token_ids: list[int] | None = None) -> list[BlockHash]:
        """Hashes of `seq`'s full blocks, extended as it grows (computed once per block)."""
        hashes = self._hashes.setdefault(seq.seq_id, [])
        if len(hashes) < seq.num_tokens // self.block_size:
            extend_hashes(hashes, seq.token_ids if token_ids is None else token_ids, self.block_size, self.hash_fn)
        return hashes

    def _blocks_needed(self, seq: Sequence, num_new_tokens: int, hits: list[int]) -> int:
        """Free blocks `seq` needs to write its next `num_new_tokens` positions: one per new logical block,
        plus one to copy the block it writes first if that block is shared (copy-on-write), plus each cached
        hit that is free now (taking it out of the free queue uses it up as surely as allocating it)."""
        if hits:  # a new sequence: no table yet, and its hits end on a block boundary (no copy-on-write)
            new = self.blocks_for(len(hits) * self.block_size + num_new_tokens) - len(hits)
            return new + sum(1 for b in hits if self.pool.ref_counts[b] == 0)
        table, start = self.block_tables.get(seq.seq_id, []), self.num_computed_tokens(seq)
        new = max(0, self.blocks_for(start + num_new_tokens) - len(table))
        first = start // self.block_size
        return new + (1 if first < len(table) and self.pool.is_shared(table[first]) else 0)

    def can_allocate_slots(self, seq: Sequence, num_new_tokens: int, hits: list[int] = ()) -> bool:
        """Are there free blocks for `seq`'s next `num_new_tokens` positions (a prompt chunk, or one decode),
        after the cached blocks `hits` (from `find_cached`) at its start?"""
        return self._blocks_needed(seq, num_new_tokens, list(hits)) <= self.pool.num_free

    def allocate_slots(self, seq: Sequence, num_new_tokens: int, hits: list[int] = ()) -> None:
        """Make positions computed .. computed + num_new_tokens - 1 writable: a block table for a sequence that
        has none (starting with the cached blocks `hits`, already computed), new blocks past its end, and a
        private copy of a shared block it is about to write into. Called once per scheduled chunk."""
        if seq.seq_id not in self.block_tables:
            self._admit(seq, list(hits))
        table = self.block_tables[seq.seq_id]
        start = self._computed[seq.seq_id]
        first = start // self.block_size
        if first < len(table) and self.pool.is_shared(table[first]):
            shared, private = table[first], self.pool.allocate()
            self.pending_copies.append((shared, private))
            self.pool.decref(shared)
            table[first] = private
        while len(table) < self.blocks_for(start + num_new_tokens):
            table.append(self.pool.allocate())

    def _admit(self, seq: Sequence, hits: list[int]) -> None:
        """A new block table: the cached hits first (each one more holder), counted in the statistics."""
        for block in hits:
            self.pool.touch(block)
        self.block_tables[seq.seq_id] = hits
        self._computed[seq.seq_id] = len(hits) * self.block_size
        self._num_cached[seq.seq_id] = len(hits)
        if self.enable_prefix_caching:
            self.stats.queried_tokens += seq.num_tokens
            self.stats.hit_tokens += len(hits) * self.block_size

    def fork(self, parent: Sequence, child: Sequence) -> None:
        """`child` shares all of `parent`'s blocks (and its cached positions); nothing is copied."""
        assert child.seq_id not in self.block_tables, f"{child} already has a block table"
        table = list(self.block_tables[parent.seq_id])
        for block in table:
            self.pool.incref(block)
        self.block_tables[child.seq_id] = table
        self._computed[child.seq_id] = self._computed[parent.seq_id]
        self._num_cached[child.seq_id] = self._num_cached[parent.seq_id]

    def free(self, seq: Sequence) -> None:
        """Drop the sequence's table (finish, abort or preemption); a sequence without one is ignored."""
        table = self.block_tables.pop(seq.seq_id, None)
        if table is None:
            return
        del self._computed[seq.seq_id], self._num_cached[seq.seq_id]
        for block in reversed(table):  # the tail first: a chain's last blocks are evicted before its first ones
            self.pool.decref(block)
        if self.pending_copies:  # a copy into a block that was just given back is no longer wanted
            freed = {b for b in table if self.pool.ref_counts[b] == 0}
            self.pending_copies = [(s, d) for s, d in self.pending_copies if d not in freed]

    def forget(self, seq: Sequence) -> None:
        """The sequence has finished: drop its block hashes too (a preempted one keeps them for its return)."""
        self._hashes.pop(seq.seq_id, None)

    def take_copies(self) -> list[tuple[int, int]]:
        copies, self.pending_copies = self.pending_copies, []
        return copies

    # -- the one owner of how many of a sequence's tokens are cached ------------------------------------
    def num_computed_tokens(self, seq: Sequence) -> int:
        """Positions of `seq` whose K/V are in its blocks (0 for a sequence without a block table)."""
        return self._computed.get(seq.seq_id, 0)

    def mark_computed(self, seq: Sequence, num_tokens: int) -> None:
        """After a step: `num_tokens` more positions of `seq` hold K/V (the scheduler calls this). Every block
        they fill is cached under its hash, for any later sequence with the same prefix."""
        self._computed[seq.seq_id] += num_tokens
        if self.enable_prefix_caching:
            self._cache_full_blocks(seq)

    def _cache_full_blocks(self, seq: Sequence) -> None:
        done, full = self._num_cached[seq.seq_id], self._computed[seq.seq_id] // self.block_size
        if done >= full:  # nothing new (or caching stopped after a collision: done is past the end)
            return
        token_ids, size, table = seq.token_ids, self.block_size, self.block_tables[seq.seq_id]
        hashes = self._block_hashes(seq, token_ids)
        for i in range(done, full):
            key = (hashes[i - 1] if i else ROOT, tuple(token_ids[i * size:(i + 1) * size]))
            if not self.pool.cache(table[i], hashes[i], key):  # a collision: later hashes chain through it
                self._num_cached[seq.seq_id] = 1 << 62
                return
        self._num_cached[seq.seq_id] = full

    def take_stats(self) -> PrefixCacheStats:
        """The prefix-cache counts since the last call (the engine records them in each step's record)."""
        stats, self.stats = self.stats, PrefixCacheStats()
        stats.evictions, self._evictions_seen = self.pool.num_evictions - self._evictions_seen, self.pool.num_evictions
        return stats

    def reset_prefix_cache(self) -> int:
        """Forget every cached prefix not in use now; returns how many blocks were dropped."""
        return self.pool.reset_cache()

    # -- what the model runner needs ---------------------------------------------------------------
    def block_table(self, seq: Sequence) -> list[int]:
        """Physical block of each of `seq`'s logical blocks."""
        return self.block_tables[seq.seq_id]

    def slot_mapping(self, seq: Sequence, start: int, num: int) -> list[int]:
        """Flat cache slots (block * block_size + offset) where positions start .. start+num-1 are written."""
        table, size = self.block_tables[seq.seq_id], self.block_size
        for index in range(start // size, (start + num - 1) // size + 1):
            assert not self.pool.is_shared(table[index]), f"{seq} would write into shared block {table[index]}"
        return [table[p // size] * size + p % size for p in range(start, start + num)]

    # -- measurements ------------------------------------------------------------------------------
    @property
    def used_tokens(self) -> int:
        """Positions that hold a token's K/V, counting a shared block once."""
        filled: dict[int, int] = {}
        for seq_id, table in self.block_tables.items():
            cached = self._computed[seq_id]
            for i, block in enumerate(table):
                n = min(self.block_size, max(0, cached - i * self.block_size))
                filled[block] = max(filled.get(block, 0), n)
        return sum(filled.values())

    @property
    def num_used_blocks(self) -> int:
        return self.pool.num_used

    def check_invariants(self, running: set[int]) -> None:
        """What must hold between steps (the randomized test calls this after every one)."""
        pool = self.pool
        assert set(self.block_tables) == running, "a block table belongs to a sequence that is not running"
        holders = Counter(b for table in self.block_tables.values() for b in table)
        for seq_id, table in self.block_tables.items():
            assert len(set(table)) == len(table), f"sequence {seq_id} holds a block twice"
            assert len(table) == self.blocks_for(self._computed[seq_id]), f"sequence {seq_id}: table size"
        free = set(pool.free_queue)
        assert not free & holders.keys(), "a block is both free and owned"
        assert len(free) + len(holders) == pool.num_blocks, "a block is neither free nor owned (leaked)"
        for block in range(pool.num_blocks):
            assert pool.ref_counts[block] == holders.get(block, 0), (
                f"block {block}: ref count {pool.ref_counts[block]} but {holders.get(block, 0)} tables hold it")
        assert not self.pending_copies, "a copy-on-write was planned but never performed"
        # the prefix cache: the map and the blocks agree, and each hash is the hash of what its block was computed from
        named = {b: h for b, h in enumerate(pool.block_hashes) if h is not None}
        assert named == {b: h for h, b in pool.cached.items()}, "the hash map and the blocks' hashes disagree"
        for block, block_hash in named.items():
            parent, token_ids = pool.block_keys[block]
            assert len(token_ids) == self.block_size, f"cached block {block} is not full"
            assert self.hash_fn(parent, token_ids, b"") == block_hash, f"block {block}: wrong hash"
        for seq_id, table in self.block_tables.items():  # a named block in a table is named by that sequence's hash
            hashes = self._hashes.get(seq_id, [])
            for i, block in enumerate(table[:min(self._num_cached[seq_id], len(hashes))]):
                assert pool.block_hashes[block] in (None, hashes[i]), f"sequence {seq_id} block {i}: another prefix's block"
