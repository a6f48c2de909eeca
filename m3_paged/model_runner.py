"""M3's model runner: m2's flat batch, with the block tables turned into tensors the attention reads.

Per step it builds, once for all layers:

- `input_ids[T]` and `positions[T]`: each sequence's uncached tokens, end to end (decodes first);
- `slot_mapping[T]`: where each of those tokens' K/V is written (`block * block_size + offset`);
- `block_tables[num_decodes, max_blocks]` and `context_lens[num_decodes]`: what a decode reads.

Before the forward pass it performs the copy-on-write copies the scheduler planned. After it, each
sequence samples one token. A parent admitted with siblings (n > 1) samples once for each of them from
the same logits, each with its own generator: the prompt ran once for all n.
"""

from __future__ import annotations

import torch

from m3_paged.attention import PagedMetadata
from m3_paged.kv_cache import PagedKVCache
from m3_paged.kv_cache_manager import KVCacheManager
from m3_paged.scheduler import ScheduledBatch
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
        nd = batch.num_decode_tokens  # the first nd sequences decode (the scheduler places them first)
        assert all(n == 1 and s > 0 for s, n in zip(starts[:nd], lens[:nd]))
        tables = [kv.block_table(seq) for seq in batch.seqs[:nd]]
        width = max((len(t) for t in tables), default=1)
        metadata = PagedMetadata(
            kv_cache=cache, num_decodes=nd, starts=starts, lens=lens,
            slot_mapping=torch.tensor(slots, dtype=torch.long, device=self.device),
            block_tables=torch.tensor([b for t in tables for b in t + [0] * (width - len(t))], dtype=torch.int32,
                                      device=self.device).view(nd, width),  # padded with block 0, never read
            context_lens=torch.tensor([s + 1 for s in starts[:nd]], dtype=torch.int32, device=self.device),
        )
        input_ids = torch.tensor(token_ids, dtype=torch.long, device=self.device)
        pos = torch.tensor(positions, dtype=torch.long, device=self.device)
        hidden = self.model(input_ids, pos, self.backend, metadata)  # [T, hidden]
        # who samples, and from which sequence's last token: a parent's siblings share its row
        samplers: list[Sequence] = []
        rows: list[int] = []
        for i, seq in enumerate(batch.seqs):
            for s in (seq, *batch.forks.get(seq.seq_id, ())):
                samplers.append(s)
                rows.append(i)
        last = torch.tensor(lens, device=self.device).cumsum(0) - 1  # each sequence's last token in the flat batch
        logits = self.model.compute_logits(hidden[last[torch.tensor(rows, device=self.device)]])  # [len(samplers), vocab]
        out = self.sampler(logits, samplers)
        return list(zip(samplers, out.token_ids.tolist(), out.logprobs, strict=True))
