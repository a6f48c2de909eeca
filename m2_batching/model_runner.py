"""M2's model runner: one forward pass for a whole batch of sequences, then one sample per sequence.

Each sequence contributes the tokens the scheduler planned for it (`batch.num_new_tokens`), starting at
what its slot has cached (`cache.num_computed_tokens`): the whole prompt when it is admitted, its whole
history when it is recomputed after preemption, and one token when it decodes. They are
concatenated into flat `input_ids[T]` / `positions[T]`. The model's matmuls run once over all T tokens,
which is where batching pays off. Only each sequence's last hidden state goes through the LM head.
"""

from __future__ import annotations

import torch

from m2_batching.attention import BatchedNaiveBackend, BatchMetadata
from m2_batching.kv_cache import ContiguousKVCache
from m2_batching.scheduler import ScheduledBatch
from shared.sampling import Sampler, TokenLogprobs


class ModelRunner:
    def __init__(self, model: torch.nn.Module, device: str) -> None:
        self.model, self.device = model, device
        self.backend = BatchedNaiveBackend()
        self.sampler = Sampler()

    @torch.inference_mode()
    def execute(self, batch: ScheduledBatch, cache: ContiguousKVCache) -> list[tuple[int, TokenLogprobs | None]]:
        """Run the tokens the scheduler planned for each sequence; return one sampled token (and its log-probs) per sequence."""
        seqs, lens = batch.seqs, batch.num_new_tokens
        token_ids: list[int] = []
        positions: list[int] = []
        slots, starts = [], []
        for seq, n in zip(seqs, lens, strict=True):
            start = cache.num_computed_tokens(seq)
            token_ids += seq.token_ids_between(start, start + n)
            positions += range(start, start + n)
            slots.append(cache.slot(seq))
            starts.append(start)
        metadata = BatchMetadata(slots=slots, starts=starts, lens=lens)
        input_ids = torch.tensor(token_ids, dtype=torch.long, device=self.device)  # [T]
        pos = torch.tensor(positions, dtype=torch.long, device=self.device)  # [T]
        hidden = self.model(input_ids, pos, self.backend, metadata)  # [T, hidden]
        last = torch.tensor(lens, device=self.device).cumsum(0) - 1  # each sequence's last token in the flat batch
        logits = self.model.compute_logits(hidden[last])  # [B, vocab]
        out = self.sampler(logits, seqs)
        return list(zip(out.token_ids.tolist(), out.logprobs, strict=True))
