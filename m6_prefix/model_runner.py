"""M5's model runner: m4's varlen batch, where a sequence's tokens may be one chunk of its prompt.

Per step it builds, once for all layers (`build_metadata` in attention.py):

- `input_ids[T]` and `positions[T]`: each sequence's uncached tokens, end to end (decodes first);
- `slot_mapping[T]`: where each of those tokens' K/V is written;
- `cu_seqlens_q[S+1]`, `seq_lens[S]` and `block_table[S, max_blocks]` for every sequence, decode or prefill.

Nothing here assumes a prefill starts at position 0 (m4 already did not): a chunk's tokens start wherever
the sequence's cached count stands, and attention sees the earlier chunks through the block table.

Before the forward pass it performs the copy-on-write copies the scheduler planned. After it, only the
sequences whose scheduled tokens end their prompt (or decode) sample: a chunk in the middle of a prompt
computes K/V for the cache and no logits at all. A parent whose last chunk ran with siblings (n > 1)
samples once for each of them from the same logits, each with its own generator.
"""

from __future__ import annotations

import torch

from m6_prefix.attention import build_metadata
from m6_prefix.kv_cache import PagedKVCache
from m6_prefix.kv_cache_manager import KVCacheManager
from m6_prefix.scheduler import ScheduledBatch
from shared.attention import AttentionBackend
from shared.request import Sequence
from shared.sampling import Sampler, TokenLogprobs


class ModelRunner:
    def __init__(self, model: torch.nn.Module, backend: AttentionBackend, device: str) -> None:
        self.model, self.backend, self.device = model, backend, device
        self.sampler = Sampler()

    @torch.inference_mode()
    def execute(self, batch: ScheduledBatch, kv: KVCacheManager, cache: PagedKVCache,
                ) -> list[tuple[Sequence, int, TokenLogprobs | None]]:
        """Run every scheduled sequence's uncached tokens; return (sequence, sampled token, log-probs)
        for each sequence that samples this step: the scheduled ones, and the siblings forked from them."""
        cache.copy_blocks(kv.take_copies())
        lens = batch.num_new_tokens
        token_ids: list[int] = []
        positions: list[int] = []
        slots: list[int] = []
        starts: list[int] = []
        for seq, n in zip(batch.seqs, lens, strict=True):
            start = kv.num_computed_tokens(seq)
            token_ids += seq.token_ids_between(start, start + n)
            positions += range(start, start + n)
            slots += kv.slot_mapping(seq, start, n)
            starts.append(start)
        metadata = build_metadata(cache, [kv.block_table(seq) for seq in batch.seqs], starts, lens, slots, self.device)
        input_ids = torch.tensor(token_ids, dtype=torch.long, device=self.device)
        pos = torch.tensor(positions, dtype=torch.long, device=self.device)
        hidden = self.model(input_ids, pos, self.backend, metadata)  # [T, hidden]
        # who samples, and from which sequence's last token: a parent's siblings share its row
        samplers: list[Sequence] = []
        rows: list[int] = []
        for i, (seq, samples) in enumerate(zip(batch.seqs, batch.samples, strict=True)):
            if not samples:  # a chunk that does not end the prompt: nothing to predict
                continue
            for s in (seq, *batch.forks.get(seq.seq_id, ())):
                samplers.append(s)
                rows.append(i)
        if not samplers:
            return []
        last = torch.tensor(lens, device=self.device).cumsum(0) - 1  # each sequence's last token in the flat batch
        logits = self.model.compute_logits(hidden[last[torch.tensor(rows, device=self.device)]])  # [len(samplers), vocab]
        out = self.sampler(logits, samplers)
        return list(zip(samplers, out.token_ids.tolist(), out.logprobs, strict=True))
