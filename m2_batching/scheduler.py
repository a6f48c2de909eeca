"""M2's scheduler: at every step, decide which sequences run and how many tokens each (iteration-level batching).

Two queues. `waiting` holds sequences that have no KV slot: new ones, and preempted ones that will be
recomputed. It is first come, first served. `running` holds sequences that have a slot, oldest first.
One `schedule()` call plans one model step:

1. Every running sequence decodes one token. If its slot must grow and the memory budget is spent, the
   newest running sequence is preempted: its slot is freed and it goes back to the front of `waiting`.
   If the sequence itself is the newest, it is the one preempted.
2. Then, if nothing was preempted, waiting sequences are admitted in order while the step has room:
   at most `max_num_seqs` sequences, at most `max_num_batched_tokens` tokens, and a slot that fits the
   budget. An admitted sequence runs all its tokens at once: its prompt, or for a preempted sequence its
   prompt and everything generated so far, which rebuilds the KV cache it lost (recompute).

So new requests join between decode steps and finished ones leave at once (the engine calls `finish`).
Orca called this iteration-level scheduling. A request no longer waits for a whole batch to drain.

The plan says how many tokens each sequence computes this step (`ScheduledBatch.num_new_tokens`); after
the step, `update_after_step` tells the KV cache, the one owner of each sequence's cached count.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from m2_batching.kv_cache import ContiguousKVCache
from shared.config import SchedulerConfig
from shared.request import Sequence, SequenceStatus


@dataclass
class ScheduledBatch:
    """The plan for one step: which sequences run, in batch order, and what changed."""

    seqs: list[Sequence] = field(default_factory=list)  # decoding sequences first, then admitted ones
    num_new_tokens: list[int] = field(default_factory=list)  # per sequence: tokens it computes this step
    num_prefill_tokens: int = 0
    num_decode_tokens: int = 0
    preempted: list[Sequence] = field(default_factory=list)

    @property
    def num_tokens(self) -> int:
        return self.num_prefill_tokens + self.num_decode_tokens

    def add(self, seq: Sequence, num_new_tokens: int, decode: bool) -> None:
        self.seqs.append(seq)
        self.num_new_tokens.append(num_new_tokens)
        if decode:
            self.num_decode_tokens += num_new_tokens
        else:
            self.num_prefill_tokens += num_new_tokens


class Scheduler:
    def __init__(self, config: SchedulerConfig, cache: ContiguousKVCache) -> None:
        self.config, self.cache = config, cache
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    def schedule(self) -> ScheduledBatch:
        batch = ScheduledBatch()
        # 1. decode: every running sequence advances one token; the newest give way when memory runs out
        queue, self.running = deque(self.running), []
        while queue:
            seq = queue.popleft()
            while seq.status is SequenceStatus.RUNNING and not self.cache.can_append(seq):
                victim = queue.pop() if queue else seq  # the newest running sequence not yet placed in this step
                self._preempt(victim, batch)
            if seq.status is SequenceStatus.RUNNING:
                self.cache.append(seq)
                self.running.append(seq)
                batch.add(seq, 1, decode=True)
        # 2. admit: first come, first served, while the step has sequences, tokens and memory to spare.
        # After a preemption the budget is known to be tight, so nothing new is admitted this step.
        while self.waiting and not batch.preempted and len(self.running) < self.config.max_num_seqs:
            seq = self.waiting[0]
            if batch.num_tokens + seq.num_tokens > self.config.max_num_batched_tokens:
                break
            if not self.cache.can_allocate(seq):
                break
            self.waiting.popleft()
            self.cache.allocate(seq)
            seq.set_status(SequenceStatus.RUNNING)
            self.running.append(seq)
            batch.add(seq, seq.num_tokens - self.cache.num_computed_tokens(seq), decode=False)
        return batch

    def update_after_step(self, batch: ScheduledBatch) -> None:
        """The step ran: each scheduled sequence's K/V now holds the tokens it computed."""
        for seq, n in zip(batch.seqs, batch.num_new_tokens, strict=True):
            self.cache.mark_computed(seq, n)

    def _preempt(self, seq: Sequence, batch: ScheduledBatch) -> None:
        """Drop the sequence's KV cache; it waits at the front of the queue and is recomputed later."""
        self.cache.free(seq)
        seq.set_status(SequenceStatus.PREEMPTED)
        self.waiting.appendleft(seq)
        batch.preempted.append(seq)

    def finish(self, seq: Sequence) -> None:
        """Remove a finished (or aborted) sequence from whichever queue holds it and free its slot."""
        if seq in self.running:
            self.running.remove(seq)
        elif seq in self.waiting:
            self.waiting.remove(seq)
        self.cache.free(seq)

    def check_invariants(self) -> None:
        """What must hold between steps (the randomized test calls this after every one)."""
        running, waiting = {s.seq_id for s in self.running}, {s.seq_id for s in self.waiting}
        assert not running & waiting, f"sequences both running and waiting: {running & waiting}"
        assert len(running) == len(self.running) and len(waiting) == len(self.waiting), "a sequence is queued twice"
        assert all(s.status is SequenceStatus.RUNNING for s in self.running)
        assert all(s.status in (SequenceStatus.WAITING, SequenceStatus.PREEMPTED) for s in self.waiting)
        assert set(self.cache.slots) == running, "a slot belongs to a sequence that is not running"
        assert self.cache.reserved_tokens == sum(sl.capacity for sl in self.cache.slots.values())
        assert self.cache.reserved_tokens <= self.cache.capacity_tokens, "memory budget exceeded"
        assert len(self.running) <= self.config.max_num_seqs
