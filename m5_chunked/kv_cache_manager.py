"""M5's KV cache manager: m3's block tables, with blocks handed out per scheduled chunk.

Position p of a sequence lives in logical block p // block_size, at offset p % block_size. The block
table says which physical block that is, so a sequence's K/V can sit anywhere in the pool: nothing has
to be reserved ahead, and a sequence takes a new block only when it crosses a block boundary. The only
waste is the unfilled tail of each sequence's last block (internal fragmentation, < 1 block each).

What changed from m4: admission and decoding were two questions (`can_allocate` for a whole prompt,
`can_append` for one token). With chunked prefill both are the same question, asked with a count:
`can_allocate_slots(seq, n)` before the scheduler plans n more tokens of `seq` (a prompt chunk, or one
decode), then `allocate_slots(seq, n)`. A 6,000-token prompt cut into chunks holds the blocks of the
chunks it has run, not of the whole prompt, as in vLLM V1's `allocate_slots`. When the answer is no, the
scheduler preempts.

Copy-on-write: `fork` gives a child sequence (another completion of the same prompt, n > 1) the
parent's block table, raising each block's reference count. Nothing is copied then. Full blocks stay
shared for good, since nobody writes them again. When a sequence is about to write into a partly filled
block that others still hold, `allocate_slots` gives it a fresh block, and records a (source, destination)
copy. The model runner performs that copy before the step's forward pass. The last holder writes in place.
"""

from __future__ import annotations

from collections import Counter

from m5_chunked.block_pool import BlockPool
from shared.request import Sequence


class KVCacheManager:
    def __init__(self, num_blocks: int, block_size: int) -> None:
        self.block_size = block_size
        self.pool = BlockPool(num_blocks)
        self.block_tables: dict[int, list[int]] = {}  # seq_id -> physical block of each logical block
        self._computed: dict[int, int] = {}  # seq_id -> positions whose K/V are in the cache (see num_computed_tokens)
        self.pending_copies: list[tuple[int, int]] = []  # copy-on-write (src, dst) for the next forward pass

    def blocks_for(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)  # ceil

    # -- the scheduler's questions and the operations they guard -------------------------------------
    def _blocks_needed(self, seq: Sequence, num_new_tokens: int) -> int:
        """Free blocks `seq` needs to write its next `num_new_tokens` positions: one per new logical block,
        plus one to copy the block it writes first if that block is shared (copy-on-write)."""
        table, start = self.block_tables.get(seq.seq_id, []), self.num_computed_tokens(seq)
        new = max(0, self.blocks_for(start + num_new_tokens) - len(table))
        first = start // self.block_size
        return new + (1 if first < len(table) and self.pool.is_shared(table[first]) else 0)

    def can_allocate_slots(self, seq: Sequence, num_new_tokens: int) -> bool:
        """Are there free blocks for `seq`'s next `num_new_tokens` positions (a prompt chunk, or one decode)?"""
        return self._blocks_needed(seq, num_new_tokens) <= self.pool.num_free

    def allocate_slots(self, seq: Sequence, num_new_tokens: int) -> None:
        """Make positions computed .. computed + num_new_tokens - 1 writable: a block table for a sequence that
        has none, new blocks past its end, and a private copy of a shared block it is about to write into.
        M5 calls this once per scheduled chunk, so a long prompt holds only the blocks of the chunks it has run."""
        table = self.block_tables.setdefault(seq.seq_id, [])
        start = self._computed.setdefault(seq.seq_id, 0)
        first = start // self.block_size
        if first < len(table) and self.pool.is_shared(table[first]):
            shared, private = table[first], self.pool.allocate()
            self.pending_copies.append((shared, private))
            self.pool.decref(shared)
            table[first] = private
        while len(table) < self.blocks_for(start + num_new_tokens):
            table.append(self.pool.allocate())

    def fork(self, parent: Sequence, child: Sequence) -> None:
        """`child` shares all of `parent`'s blocks (and its cached positions); nothing is copied."""
        assert child.seq_id not in self.block_tables, f"{child} already has a block table"
        table = list(self.block_tables[parent.seq_id])
        for block in table:
            self.pool.incref(block)
        self.block_tables[child.seq_id] = table
        self._computed[child.seq_id] = self._computed[parent.seq_id]

    def free(self, seq: Sequence) -> None:
        """Drop the sequence's table (finish, abort or preemption); a sequence without one is ignored."""
        table = self.block_tables.pop(seq.seq_id, None)
        if table is None:
            return
        del self._computed[seq.seq_id]
        for block in reversed(table):  # the tail first, as vLLM does (it matters for M6's eviction order)
            self.pool.decref(block)
        if self.pending_copies:  # a copy into a block that was just given back is no longer wanted
            freed = {b for b in table if self.pool.ref_counts[b] == 0}
            self.pending_copies = [(s, d) for s, d in self.pending_copies if d not in freed]

    def take_copies(self) -> list[tuple[int, int]]:
        copies, self.pending_copies = self.pending_copies, []
        return copies

    # -- the one owner of how many of a sequence's tokens are cached ------------------------------------
    def num_computed_tokens(self, seq: Sequence) -> int:
        """Positions of `seq` whose K/V are in its blocks (0 for a sequence without a block table)."""
        return self._computed.get(seq.seq_id, 0)

    def mark_computed(self, seq: Sequence, num_tokens: int) -> None:
        """After a step: `num_tokens` more positions of `seq` hold K/V (the scheduler calls this)."""
        self._computed[seq.seq_id] += num_tokens

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
        free = set(pool.free_blocks)
        assert len(free) == len(pool.free_blocks), "a block is on the free list twice"
        assert not free & holders.keys(), "a block is both free and owned"
        assert len(free) + len(holders) == pool.num_blocks, "a block is neither free nor owned (leaked)"
        for block in range(pool.num_blocks):
            assert pool.ref_counts[block] == holders.get(block, 0), (
                f"block {block}: ref count {pool.ref_counts[block]} but {holders.get(block, 0)} tables hold it")
        assert not self.pending_copies, "a copy-on-write was planned but never performed"
