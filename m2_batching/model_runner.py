"""M2's model runner: one forward pass for a whole batch of sequences, then one sample per sequence.

Each sequence contributes the tokens its slot has not cached yet: the whole prompt when it is admitted,
its whole history when it is recomputed after preemption, and one token when it decodes. They are
concatenated into flat `input_ids[T]` / `positions[T]`. The model's matmuls run once over all T tokens,
which is where batching pays off. Only each sequence's last hidden state goes through the LM head.
"""

from __future__ import annotations

import torch

from m2_batching.attention import BatchedNaiveBackend, BatchMetadata
from m2_batching.kv_cache import ContiguousKVCache
from shared.config import ModelConfig
from shared.request import Sequence
from shared.sampling import Sampler


class ModelRunner:
    def __init__(self, model: torch.nn.Module, config: ModelConfig, dtype: torch.dtype, device: str) -> None:
        self.model, self.config, self.dtype, self.device = model, config, dtype, device
        self.backend = BatchedNaiveBackend()
        self.sampler = Sampler()

    @torch.inference_mode()
    def execute(self, seqs: list[Sequence], cache: ContiguousKVCache) -> list[int]:
        """Run every sequence's uncached tokens and return one sampled token per sequence."""
        token_ids: list[int] = []
        positions: list[int] = []
        slots, starts, lens = [], [], []
        for seq in seqs:
            slot = cache.slot(seq)
            start = slot.length
            new = [seq.last_token_id] if start == seq.num_tokens - 1 else seq.token_ids[start:]
            token_ids += new
            positions += range(start, start + len(new))
            slots.append(slot)
            starts.append(start)
            lens.append(len(new))
        metadata = BatchMetadata(num_tokens=len(token_ids), slots=slots, starts=starts, lens=lens)
        input_ids = torch.tensor(token_ids, dtype=torch.long, device=self.device)  # [T]
        pos = torch.tensor(positions, dtype=torch.long, device=self.device)  # [T]
        hidden = self.model(input_ids, pos, self.backend, metadata)  # [T, hidden]
        last = torch.tensor(lens, device=self.device).cumsum(0) - 1  # each sequence's last token in the flat batch
        logits = self.model.compute_logits(hidden[last])  # [B, vocab]
        for slot, start, n in zip(slots, starts, lens):
            slot.length = start + n
        params = [seq.request.params for seq in seqs]
        return self.sampler(logits, params, [seq.generator for seq in seqs]).tolist()
