"""The named workloads: `Workload` (latency: fixed-length requests, one at a time), `ThroughputWorkload`
(nano-vllm's: every request at once, lengths drawn from ranges) and `OnlineWorkload` (short requests arriving
over time, Poisson, with long prompts among them), each generating the same random-token requests for every
engine from its seed."""

from __future__ import annotations

import random
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


@dataclass
class OnlineWorkload:
    """A server's day in miniature: `num_requests` short requests arriving as a Poisson process at `rate` per
    second (or at the fixed times `arrivals`, in seconds), and `num_long` long prompts arriving evenly spaced
    across the short requests' span (at 1/(num_long+1), 2/(num_long+1), ... of it). Lengths are drawn uniformly
    from [lo, hi], token ids at random, EOS ignored; every engine gets the same requests at the same times.
    `behind_s`: a short request arriving within this many seconds after a long prompt is "behind" it."""

    num_requests: int = 48
    prompt_len: tuple[int, int] = (32, 128)
    output_len: tuple[int, int] = (64, 192)
    rate: float = 4.0  # short requests per second (Poisson)
    num_long: int = 3
    long_len: tuple[int, int] = (2000, 6000)
    long_output_len: int = 16
    behind_s: float = 2.0
    arrivals: list[float] | None = None  # the short requests' arrival times instead of Poisson ones
    seed: int = 0
    name: str = "online"

    def __post_init__(self) -> None:
        for what, (lo, hi) in (("prompt_len", self.prompt_len), ("output_len", self.output_len),
                               ("long_len", self.long_len)):
            if not 1 <= lo <= hi:
                raise BenchError(f"{what} range must satisfy 1 <= lo <= hi, got {lo}:{hi}")
        if self.output_len[0] < 2:
            raise BenchError(f"output lengths must be >= 2 so that the gaps between tokens are defined, "
                             f"got {self.output_len[0]}")
        if self.num_requests < 1:
            raise BenchError(f"num_requests must be >= 1, got {self.num_requests}")
        if self.num_long < 0:
            raise BenchError(f"the number of long prompts must be >= 0, got {self.num_long}")
        if self.long_output_len < 1:
            raise BenchError(f"long_output_len must be >= 1, got {self.long_output_len}")
        if not 0 < self.rate < float("inf"):
            raise BenchError(f"rate must be a positive number of requests per second, got {self.rate}")
        if not 0 <= self.behind_s < float("inf"):
            raise BenchError(f"behind_s must be a number of seconds >= 0, got {self.behind_s}")
        if self.arrivals is not None:
            a = [float(x) for x in self.arrivals]
            if len(a) != self.num_requests:
                raise BenchError(f"arrivals lists {len(a)} times for {self.num_requests} short requests")
            if any(not 0 <= x < float("inf") for x in a) or a != sorted(a):
                raise BenchError("arrivals must be seconds >= 0 in increasing order")
            self.arrivals = a

    def arrival_times(self) -> list[float]:
        """The short requests' arrival times in seconds from the start: the first at 0, then exponential gaps of
        mean 1/rate (or `arrivals` as given)."""
        if self.arrivals is not None:
            return list(self.arrivals)
        rng = random.Random(self.seed)
        times = [0.0]
        for _ in range(self.num_requests - 1):
            times.append(times[-1] + rng.expovariate(self.rate))
        return times

    def long_arrival_times(self) -> list[float]:
        """Evenly spaced across the short requests' span: at k/(num_long+1) of it, k = 1 .. num_long."""
        times = self.arrival_times()
        first, span = times[0], times[-1] - times[0]
        return [first + span * k / (self.num_long + 1) for k in range(1, self.num_long + 1)]

    def requests(self, vocab_size: int) -> list[tuple[str, float, list[int], int, bool]]:
        """(request_id, arrival_s, prompt token ids, output length, is_long) in arrival order, the same for every
        engine; ids short-0 ... and long-0 ...; token ids avoid the first 16 (special tokens)."""
        g = torch.Generator().manual_seed(self.seed)

        def draw(lo: int, hi: int) -> int:
            return int(torch.randint(lo, hi + 1, (1,), generator=g))

        out = []
        for i, t in enumerate(self.arrival_times()):
            p, o = draw(*self.prompt_len), draw(*self.output_len)
            out.append((f"short-{i}", t, torch.randint(16, vocab_size, (p,), generator=g).tolist(), o, False))
        for i, t in enumerate(self.long_arrival_times()):
            p = draw(*self.long_len)
            out.append((f"long-{i}", t, torch.randint(16, vocab_size, (p,), generator=g).tolist(), self.long_output_len, True))
        return sorted(out, key=lambda r: r[1])  # stable: a long prompt due with a short one follows it

    def max_request_len(self) -> int:
        """Prompt + output tokens of the longest request the workload can draw (what max_model_len must hold)."""
        longest = self.prompt_len[1] + self.output_len[1]
        return max(longest, self.long_len[1] + self.long_output_len) if self.num_long else longest
