"""M3's scheduler: m2's iteration-level scheduling, with memory counted in blocks and n > 1 forked at admission.

Two queues, as in m2. `waiting` holds sequences without blocks, first come first served: new ones, and
preempted ones to recompute. `running` holds sequences with a block table, oldest first. One
`schedule()` call plans one model step:

1. Every running sequence decodes one token. It may need a free block: at a block boundary, or to copy
   a shared block before writing it (copy-on-write). If none is free, the newest running sequence is
   preempted. Its blocks go back to the pool, and it waits at the front of `waiting`, to be recomputed.
2. Then, if nothing was preempted, waiting sequences are admitted in order while the step has room:
   at most `max_num_seqs` sequences, at most `max_num_batched_tokens` tokens, and free blocks for all of
   the sequence's tokens. Blocks are taken as needed, so admission no longer reserves for the longest
   possible output, as m2's slots did. Far more sequences fit in the same memory.

Parallel sampling (n > 1): only a request's first sequence waits in the queue. When it is admitted, its
siblings are planned as forks (`ScheduledBatch.forks`). The prompt runs once, every sibling samples its
own first token from the same logits, and then `update_after_step` forks them: they share the prompt's
blocks (copy-on-write) and decode as independent sequences. Siblings planned this way count against
`max_num_seqs` from the moment they are planned.

The scheduler's plan says how many tokens each sequence computes this step (`num_new_tokens`); after the
step, `update_after_step` tells the KV cache manager, the one owner of each sequence's cached count.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from m4_flash.kv_cache_manager import KVCacheManager
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
    forks: dict[int, list[Sequence]] = field(default_factory=dict)  # seq_id of an admitted parent -> its siblings

    @property
    def num_tokens(self) -> int:
        return self.num_prefill_tokens + self.num_decode_tokens

    @property
    def num_forks(self) -> int:
        """Siblings that join the running set when this step's prompts have run."""
        return sum(len(children) for children in self.forks.values())

    def add(self, seq: Sequence, num_new_tokens: int, decode: bool) -> None:
        self.seqs.append(seq)
        self.num_new_tokens.append(num_new_tokens)
        if decode:
            self.num_decode_tokens += num_new_tokens
        else:
            self.num_prefill_tokens += num_new_tokens


class Scheduler:
    def __init__(self, config: SchedulerConfig, kv: KVCacheManager) -> None:
        self.config, self.kv = config, kv
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    def schedule(self) -> ScheduledBatch:
        batch = ScheduledBatch()
        # 1. decode: every running sequence advances one token; the newest give way when blocks run out
        queue, self.running = deque(self.running), []
        while queue:
            seq = queue.popleft()
            while seq.status is SequenceStatus.RUNNING and not self.kv.can_append(seq):
                victim = queue.pop() if queue else seq  # the newest running sequence not yet placed in this step
                self._preempt(victim, batch)
            if seq.status is SequenceStatus.RUNNING:
                self.kv.append(seq)
                self.running.append(seq)
                batch.add(seq, 1, decode=True)
        # 2. admit: first come, first served, while the step has sequences, tokens and blocks to spare.
        # After a preemption memory is known to be tight, so nothing new is admitted this step.
        while self.waiting and not batch.preempted:
            seq = self.waiting[0]
            siblings = self._unforked_siblings(seq)
            # the siblings planned earlier in this step run from the next step on: they count now
            if len(self.running) + batch.num_forks + 1 + len(siblings) > self.config.max_num_seqs:
                break
            num_new = seq.num_tokens - self.kv.num_computed_tokens(seq)
            if batch.num_tokens + num_new > self.config.max_num_batched_tokens:
                break
            if not self.kv.can_allocate(seq):
                break
            self.waiting.popleft()
            self.kv.allocate(seq)
            seq.set_status(SequenceStatus.RUNNING)
            self.running.append(seq)
            batch.add(seq, num_new, decode=False)
            if siblings:
                batch.forks[seq.seq_id] = siblings
        return batch

    @staticmethod
    def _unforked_siblings(seq: Sequence) -> list[Sequence]:
        """The other n - 1 completions of a request whose prompt has not run yet (they join by forking)."""
        if seq.index != 0:
            return []
        return [s for s in seq.request.seqs[1:] if s.status is SequenceStatus.WAITING]

    def update_after_step(self, batch: ScheduledBatch) -> None:
        """The step ran: each scheduled sequence's blocks now hold the tokens it computed, and the siblings of
        an admitted parent fork from it (they share its blocks from now on)."""
        for seq, n in zip(batch.seqs, batch.num_new_tokens, strict=True):
            self.kv.mark_computed(seq, n)
        for parent in batch.seqs:
            for child in batch.forks.get(parent.seq_id, ()):
                self._fork(parent, child)

    def _fork(self, parent: Sequence, child: Sequence) -> None:
        """After the parent's prompt has run: the child shares its blocks and runs from now on."""
        self.kv.fork(parent, child)
        child.set_status(SequenceStatus.RUNNING)
        self.running.append(child)

    def _preempt(self, seq: Sequence, batch: ScheduledBatch) -> None:
        """Free the sequence's blocks; it waits at the front of the queue and is recomputed later."""
        self.kv.free(seq)
        seq.set_status(SequenceStatus.PREEMPTED)
        self.waiting.appendleft(seq)
        batch.preempted.append(seq)

    def finish(self, seq: Sequence) -> None:
        """Remove a finished (or aborted) sequence from whichever queue holds it and free its blocks."""
        if seq in self.running:
            self.running.remove(seq)
        elif seq in self.waiting:
            self.waiting.remove(seq)
        self.kv.free(seq)

    def check_invariants(self) -> None:
        """What must hold between steps (the randomized test calls this after every one)."""
        running, waiting = {s.seq_id for s in self.running}, {s.seq_id for s in self.waiting}
        assert not running & waiting, f"sequences both running and waiting: {running & waiting}"
        assert len(running) == len(self.running) and len(waiting) == len(self.waiting), "a sequence is queued twice"
        assert all(s.status is SequenceStatus.RUNNING for s in self.running)
        assert all(s.status in (SequenceStatus.WAITING, SequenceStatus.PREEMPTED) for s in self.waiting)
        assert len(self.running) <= self.config.max_num_seqs
        self.kv.check_invariants(running)
