"""M1's model runner: turns "run these tokens of this sequence" into tensors, a forward pass and a sample.

Generation is two small named functions (gpt-fast's habit): `prefill` runs the whole prompt once and
fills the KV cache; `decode` runs the one newest token against the cache. Only the last position's
hidden state goes through the LM head, since only it is sampled.
"""

from __future__ import annotations

import torch

from m1_basic.attention import NaiveAttentionBackend, NaiveMetadata
from m1_basic.kv_cache import ContiguousKVCache
from shared.config import ModelConfig
from shared.request import Sequence
from shared.sampling import Sampler, TokenLogprobs


class ModelRunner:
    def __init__(self, model: torch.nn.Module, config: ModelConfig, dtype: torch.dtype, device: str) -> None:
        self.model, self.config, self.dtype, self.device = model, config, dtype, device
        self.backend = NaiveAttentionBackend()
        self.sampler = Sampler()

    def allocate_cache(self, max_len: int) -> ContiguousKVCache:
        return ContiguousKVCache(self.config, max_len, self.dtype, self.device)

    @torch.inference_mode()
    def _run(self, seq: Sequence, cache: ContiguousKVCache, token_ids: list[int], start: int) -> tuple[int, TokenLogprobs | None]:
        input_ids = torch.tensor(token_ids, dtype=torch.long, device=self.device)  # [T]
        positions = torch.arange(start, start + len(token_ids), device=self.device)  # [T]
        metadata = NaiveMetadata(start_pos=start, kv_cache=cache)
        hidden = self.model(input_ids, positions, self.backend, metadata)  # [T, hidden]
        logits = self.model.compute_logits(hidden[-1:])  # [1, vocab]
        out = self.sampler(logits, [seq])
        return out.token_ids.item(), out.logprobs[0]

    def prefill(self, seq: Sequence, cache: ContiguousKVCache) -> tuple[int, TokenLogprobs | None]:
        """Run the prompt (positions 0..P-1) and sample the first output token."""
        return self._run(seq, cache, seq.prompt_token_ids, start=0)

    def decode(self, seq: Sequence, cache: ContiguousKVCache) -> tuple[int, TokenLogprobs | None]:
        """Run the newest token (position num_tokens-1) and sample the next one."""
        return self._run(seq, cache, seq.output_token_ids[-1:], start=seq.num_tokens - 1)
