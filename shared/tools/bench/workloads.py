"""The named workloads: `Workload` (latency: fixed-length requests, one at a time) and `ThroughputWorkload`
(nano-vllm's: every request at once, lengths drawn from ranges), each generating the same random-token
requests for every engine from its seed."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from shared.tools.bench.checks import BenchError


@dataclass
class Workload:
    name: str
    num_requests: int
    prompt_len: int
    output_len: int
    seed: int = 0

    def __post_init__(self) -> None:
        if self.num_requests < 1 or self.prompt_len < 1:
            raise BenchError(f"num_requests and prompt_len must be >= 1, got {self.num_requests}, {self.prompt_len}")
        if self.output_len < 2:
            raise BenchError(f"output_len must be >= 2 so that TPOT is defined, got {self.output_len}")

    def prompts(self, vocab_size: int) -> list[list[int]]:
        """Random token ids (as nano-vllm's benchmark), avoiding the first 16 ids where special tokens live."""
        g = torch.Generator().manual_seed(self.seed)
        return [torch.randint(16, vocab_size, (self.prompt_len,), generator=g).tolist() for _ in range(self.num_requests)]


@dataclass
class ThroughputWorkload:
    """nano-vllm's throughput test, scaled by its arguments: `num_requests` sequences submitted at once,
    prompt and output lengths drawn uniformly from [lo, hi], random token ids, EOS ignored.
    Throughput = output tokens / wall time of the whole batch."""

    num_requests: int
    prompt_len: tuple[int, int]
    output_len: tuple[int, int]
    seed: int = 0
    name: str = "throughput"

    def __post_init__(self) -> None:
        for what, (lo, hi) in (("prompt_len", self.prompt_len), ("output_len", self.output_len)):
            if not 1 <= lo <= hi:
                raise BenchError(f"{what} range must satisfy 1 <= lo <= hi, got {lo}:{hi}")
        if self.output_len[0] < 2:
            raise BenchError(f"output lengths must be >= 2 so that TPOT is defined, got {self.output_len[0]}")
        if self.num_requests < 1:
            raise BenchError(f"num_requests must be >= 1, got {self.num_requests}")

    def requests(self, vocab_size: int) -> list[tuple[list[int], int]]:
        """(prompt token ids, output length) per request, the same for every engine."""
        g = torch.Generator().manual_seed(self.seed)

        def draw(lo: int, hi: int) -> int:
            return int(torch.randint(lo, hi + 1, (1,), generator=g))

        out = []
        for _ in range(self.num_requests):
            p, o = draw(*self.prompt_len), draw(*self.output_len)
            out.append((torch.randint(16, vocab_size, (p,), generator=g).tolist(), o))
        return out
