"""M6's scheduler: m5's token budget, where an admitted prompt starts after its cached prefix.

One `schedule()` call plans one step, in m5's order:

1. **Decodes.** Every running sequence whose prompt is done computes one token.
2. **Partial prefills.** Running sequences whose prompt is not done yet get the next chunk, oldest first.
3. **Waiting sequences** are admitted with a first chunk.

What changed from m5 is admission. Before a waiting sequence is given a chunk, the KV cache manager looks
up its prefix (`find_cached`): the cached blocks become the start of its block table, and its chunk
starts after them. A 4,000-token prompt whose first 3,984 tokens were computed by an earlier request
runs 16 tokens. Only those 16 count against the token budget, so a cache hit also frees budget for
others. The blocks it needs are the new ones plus any hit that sits in the free queue now.

The waiting queue is first come first served, as in vLLM. `scheduling_policy="lpm"` (longest prefix
match, SGLang's cache-aware policy) admits the waiting sequence with the most cached tokens first, so
requests that share what is in the cache now run before it is evicted. Fairness bound: a sequence that
`LPM_MAX_OVERTAKES` later arrivals have overtaken goes first. Preempted sequences always go first.

A chunk is `min(tokens left, budget left, long_prefill_token_threshold)`. When blocks run out, the newest
running sequence not yet planned this step is preempted; its blocks are freed, keep their hashes, and
are usually still cached when it comes back. Parallel sampling (n > 1) and sampling only at a prompt's
end are m5's: siblings fork after the last chunk and share every block, cached or not.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from m7_gptq.kv_cache_manager import KVCacheManager
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
    samples: list[bool] = field(default_factory=list)  # per sequence: does this step end its prompt (or decode)?
    forks: dict[int, list[Sequence]] = field(default_factory=dict)  # seq_id of a parent whose prompt ends now -> siblings

    @property
    def num_tokens(self) -> int:
        return self.num_prefill_tokens + self.num_decode_tokens

    @property
    def num_forks(self) -> int:
        """Siblings that join the running set when this step's prompts have run."""
        return sum(len(children) for children in self.forks.values())

    def add(self, seq: Sequence, num_new_tokens: int, decode: bool, samples: bool = True) -> None:
        self.seqs.append(seq)
        self.num_new_tokens.append(num_new_tokens)
        self.samples.append(samples)
        if decode:
            self.num_decode_tokens += num_new_tokens
        else:
            self.num_prefill_tokens += num_new_tokens


LPM_MAX_OVERTAKES = 32  # lpm: a waiting sequence passed over by this many later arrivals is admitted next


class Scheduler:
    def __init__(self, config: SchedulerConfig, kv: KVCacheManager) -> None:
        self.config, self.kv = config, kv
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.overtaken: dict[int, int] = {}  # lpm: seq_id -> later arrivals admitted before it

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    def schedule(self) -> ScheduledBatch:
        batch = ScheduledBatch()
        budget = self.config.max_num_batched_tokens
        # 1 and 2: running sequences, decodes before partial prefills, each oldest first.
        # When blocks run out, the newest not yet planned gives way (the tail of the queue), as in m3.
        queue = deque(sorted(self.running, key=lambda s: not self._is_decode(s)))  # stable: keeps age order
        while queue:
            seq = queue.popleft()
            num_new = self._chunk(seq, budget - batch.num_tokens)
            if num_new == 0:  # no budget left for this prompt's next chunk: it keeps its blocks and waits a step
                continue
            while seq.status is SequenceStatus.RUNNING and not self.kv.can_allocate_slots(seq, num_new):
                victim = queue.pop() if queue else seq
                self._preempt(victim, batch)
            if seq.status is SequenceStatus.RUNNING:
                self.kv.allocate_slots(seq, num_new)
                self._plan(batch, seq, num_new)
        self.running = [s for s in self.running if s.status is SequenceStatus.RUNNING]  # admission order, kept
        # 3. admit waiting sequences, first come first served, while the step has seats, tokens and blocks.
        # After a preemption memory is known to be tight, so nothing new is admitted this step.
        if self.config.scheduling_policy == "lpm" and not batch.preempted:
            self._order_by_cached_prefix()
        while self.waiting and not batch.preempted:
            seq = self.waiting[0]
            if self._seats() + 1 + len(self._unforked_siblings(seq)) > self.config.max_num_seqs:
                break
            hits = self.kv.find_cached(seq)  # the cached blocks of its prefix: its first chunk starts after them
            num_new = self._chunk(seq, budget - batch.num_tokens, num_computed=len(hits) * self.kv.block_size)
            if num_new == 0 or not self.kv.can_allocate_slots(seq, num_new, hits):
                break
            self.waiting.popleft()
            self.kv.allocate_slots(seq, num_new, hits)
            seq.set_status(SequenceStatus.RUNNING)
            self.running.append(seq)
            self._plan(batch, seq, num_new)
            self._count_overtakes(seq)
        return batch

    def _order_by_cached_prefix(self) -> None:
        """lpm: preempted sequences first (they were running), then any sequence overtaken `LPM_MAX_OVERTAKES`
        times, then the most cached tokens first; ties (and no cache at all) keep arrival order."""
        def key(seq: Sequence) -> tuple:
            if seq.status is SequenceStatus.PREEMPTED:
                return (0, 0, 0)
            if self.overtaken.get(seq.seq_id, 0) >= LPM_MAX_OVERTAKES:
                return (1, 0, seq.seq_id)
            return (2, -self.kv.num_cached_tokens(seq), seq.seq_id)

        self.waiting = deque(sorted(self.waiting, key=key))  # stable: preempted ones keep their order

    def _count_overtakes(self, admitted: Sequence) -> None:
        """lpm: every sequence still waiting that arrived before `admitted` was overtaken once more."""
        self.overtaken.pop(admitted.seq_id, None)
        if self.config.scheduling_policy == "lpm":
            for seq in self.waiting:
                if seq.seq_id < admitted.seq_id:
                    self.overtaken[seq.seq_id] = self.overtaken.get(seq.seq_id, 0) + 1

    def _is_decode(self, seq: Sequence) -> bool:
        """A decode computes the one token it sampled last step (a prompt's last token is a prefill)."""
        return bool(seq.output_token_ids) and seq.num_tokens - self.kv.num_computed_tokens(seq) == 1

    def _chunk(self, seq: Sequence, budget_left: int, num_computed: int | None = None) -> int:
        """How many of `seq`'s uncomputed tokens to run this step (0: none fit). A waiting sequence passes
        `num_computed`, the cached tokens it would start with."""
        if num_computed is None:
            num_computed = self.kv.num_computed_tokens(seq)
        left = seq.num_tokens - num_computed
        if self._is_decode(seq):
            return 1 if budget_left >= 1 else 0
        if not self.config.enable_chunked_prefill:  # a prompt runs whole or waits (m4)
            return left if left <= budget_left else 0
        cap = self.config.long_prefill_token_threshold or left
        return max(0, min(left, budget_left, cap))

    def _plan(self, batch: ScheduledBatch, seq: Sequence, num_new: int) -> None:
        """Add `seq`'s `num_new` tokens to the batch. If they end its prompt it samples, and a parent's
        unforked siblings fork from it after this step."""
        decode = self._is_decode(seq)
        ends = self.kv.num_computed_tokens(seq) + num_new == seq.num_tokens
        batch.add(seq, num_new, decode=decode, samples=ends)
        siblings = self._unforked_siblings(seq)
        if ends and siblings:
            batch.forks[seq.seq_id] = siblings

    def _seats(self) -> int:
        """Sequences that hold a seat against max_num_seqs: every running one, and the siblings each running
        parent will fork into when its prompt is done (they are counted from the parent's admission)."""
        return sum(1 + len(self._unforked_siblings(s)) for s in self.running)

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
        self.kv.forget(seq)
        self.overtaken.pop(seq.seq_id, None)

    def check_invariants(self) -> None:
        """What must hold between steps (the randomized test calls this after every one)."""
        running, waiting = {s.seq_id for s in self.running}, {s.seq_id for s in self.waiting}
        assert not running & waiting, f"sequences both running and waiting: {running & waiting}"
        assert len(running) == len(self.running) and len(waiting) == len(self.waiting), "a sequence is queued twice"
        assert all(s.status is SequenceStatus.RUNNING for s in self.running)
        assert all(s.status in (SequenceStatus.WAITING, SequenceStatus.PREEMPTED) for s in self.waiting)
        assert len(self.running) <= self.config.max_num_seqs
        self.kv.check_invariants(running)
