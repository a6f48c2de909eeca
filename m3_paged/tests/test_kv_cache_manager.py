"""Block pool and KV cache manager, without a model: allocation, block boundaries, slot mapping,
fork and copy-on-write, freeing, and the invariant checker itself (it must catch a corrupted state)."""

import itertools

import pytest

from m3_paged.block_pool import BlockPool, NoFreeBlocksError
from m3_paged.kv_cache_manager import KVCacheManager

_ids = itertools.count()


class Seq:
    """The two things the manager reads from a sequence."""

    def __init__(self, num_tokens: int) -> None:
        self.seq_id = next(_ids)
        self.num_tokens = num_tokens


def run(kv: KVCacheManager, seq: Seq) -> None:
    """What one engine step does to a sequence: its tokens get cached, then one sampled token is appended."""
    kv.mark_computed(seq, seq.num_tokens - kv.num_computed_tokens(seq))
    seq.num_tokens += 1


def test_pool_counts_and_errors():
    pool = BlockPool(3)
    a, b, c = pool.allocate(), pool.allocate(), pool.allocate()
    assert pool.num_free == 0 and pool.num_used == 3 and sorted([a, b, c]) == [0, 1, 2]
    with pytest.raises(NoFreeBlocksError, match="all 3"):
        pool.allocate()
    pool.incref(b)
    assert pool.is_shared(b)
    pool.decref(b)
    pool.decref(b)
    assert pool.num_free == 1 and pool.ref_counts[b] == 0
    with pytest.raises(AssertionError, match="freed twice"):
        pool.decref(b)
    with pytest.raises(AssertionError, match="is free"):
        pool.incref(b)


def test_allocate_takes_whole_blocks_and_free_returns_them():
    kv = KVCacheManager(num_blocks=10, block_size=4)
    seq = Seq(9)  # 9 tokens -> ceil(9 / 4) = 3 blocks
    assert kv.can_allocate(seq)
    kv.allocate(seq)
    assert len(kv.block_tables[seq.seq_id]) == 3 and kv.pool.num_free == 7
    assert not kv.can_allocate(Seq(29)) and kv.can_allocate(Seq(28))  # 8 blocks > 7 free
    kv.free(seq)
    assert kv.pool.num_free == 10 and not kv.block_tables
    kv.free(seq)  # a second free (abort after finish) is ignored


def test_slot_mapping_follows_the_block_table():
    kv = KVCacheManager(num_blocks=8, block_size=4)
    ones = [Seq(1) for _ in range(8)]
    for s in ones:
        kv.allocate(s)  # blocks 0 .. 7
    kv.free(ones[5])
    kv.free(ones[2])  # the free list is now [5, 2]
    seq = Seq(7)
    kv.allocate(seq)
    assert kv.block_tables[seq.seq_id] == [5, 2]  # not contiguous, not in order
    assert kv.slot_mapping(seq, 0, 7) == [20, 21, 22, 23, 8, 9, 10]
    assert kv.slot_mapping(seq, 6, 1) == [10]


def test_append_takes_a_block_only_at_a_boundary():
    kv = KVCacheManager(num_blocks=4, block_size=4)
    seq = Seq(3)
    kv.allocate(seq)
    run(kv, seq)  # 4 tokens: position 3 still fits block 0
    assert kv.can_append(seq)
    kv.append(seq)
    assert len(kv.block_tables[seq.seq_id]) == 1
    run(kv, seq)  # 5 tokens: position 4 needs logical block 1
    kv.append(seq)
    assert len(kv.block_tables[seq.seq_id]) == 2 and kv.pool.num_free == 2


def test_can_append_is_false_when_no_block_is_free():
    kv = KVCacheManager(num_blocks=2, block_size=4)
    seq, other = Seq(4), Seq(4)
    kv.allocate(seq)
    kv.allocate(other)
    run(kv, seq)  # 5 tokens: needs a second block, none is free
    assert not kv.can_append(seq)
    kv.free(other)
    assert kv.can_append(seq)


def test_fork_shares_every_block_and_copies_only_the_partial_one_on_write():
    kv = KVCacheManager(num_blocks=10, block_size=4)
    parent = Seq(10)  # 3 blocks: 4 + 4 + 2 positions
    kv.allocate(parent)
    kv.mark_computed(parent, 10)
    child = Seq(10)
    kv.fork(parent, child)
    a, b, c = kv.block_tables[parent.seq_id]
    assert kv.block_tables[child.seq_id] == [a, b, c] and all(kv.pool.ref_counts[x] == 2 for x in (a, b, c))
    assert kv.pool.num_used == 3 and kv.used_tokens == 10  # a shared block is counted once
    with pytest.raises(AssertionError, match="shared block"):
        kv.slot_mapping(child, 10, 1)  # writing before append would corrupt the parent
    child.num_tokens = parent.num_tokens = 11
    kv.append(child)  # position 10 is in block c, which is shared: copy it
    d = kv.block_tables[child.seq_id][2]
    assert d not in (a, b, c) and kv.take_copies() == [(c, d)]
    assert kv.block_tables[child.seq_id] == [a, b, d] and kv.pool.ref_counts[c] == 1
    kv.append(parent)  # the last holder writes c in place
    assert kv.block_tables[parent.seq_id] == [a, b, c] and kv.take_copies() == []
    assert kv.pool.ref_counts[a] == kv.pool.ref_counts[b] == 2  # full blocks stay shared for good
    assert kv.slot_mapping(child, 10, 1) == [d * 4 + 2] and kv.slot_mapping(parent, 10, 1) == [c * 4 + 2]


def test_fork_at_a_block_boundary_copies_nothing():
    kv = KVCacheManager(num_blocks=10, block_size=4)
    parent = Seq(8)
    kv.allocate(parent)
    kv.mark_computed(parent, 8)
    children = [Seq(8) for _ in range(3)]
    for ch in children:
        kv.fork(parent, ch)
    for s in (parent, *children):
        s.num_tokens = 9
        kv.append(s)  # position 8 opens logical block 2: a new block each, both full blocks stay shared
    assert kv.take_copies() == [] and kv.pool.num_used == 2 + 4
    assert all(kv.pool.ref_counts[b] == 4 for b in kv.block_tables[parent.seq_id][:2])


def test_free_drops_a_planned_copy_into_a_freed_block_and_keeps_shared_blocks():
    kv = KVCacheManager(num_blocks=10, block_size=4)
    parent, child = Seq(6), Seq(6)
    kv.allocate(parent)
    kv.mark_computed(parent, 6)
    kv.fork(parent, child)
    child.num_tokens = 7
    kv.append(child)
    assert len(kv.pending_copies) == 1
    kv.free(child)  # preempted in the same step: its copy target is free again, the copy is dropped
    assert kv.pending_copies == [] and kv.pool.num_used == 2
    assert all(kv.pool.ref_counts[b] == 1 for b in kv.block_tables[parent.seq_id])
    kv.free(parent)
    assert kv.pool.num_free == 10


def test_check_invariants_catches_corruption():
    kv = KVCacheManager(num_blocks=6, block_size=4)
    seq = Seq(5)
    kv.allocate(seq)
    kv.mark_computed(seq, 5)
    kv.check_invariants({seq.seq_id})
    with pytest.raises(AssertionError, match="not running"):
        kv.check_invariants(set())
    block = kv.block_tables[seq.seq_id][0]
    kv.pool.ref_counts[block] += 1  # a reference count that no table explains
    with pytest.raises(AssertionError, match="ref count"):
        kv.check_invariants({seq.seq_id})
    kv.pool.ref_counts[block] -= 1
    kv.block_tables[seq.seq_id].pop()  # a block owned by nobody and not free: a leak
    kv.mark_computed(seq, -1)  # 4 tokens: the table size matches again
    with pytest.raises(AssertionError, match="leaked"):
        kv.check_invariants({seq.seq_id})
