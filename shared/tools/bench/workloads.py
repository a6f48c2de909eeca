"""The named workloads: `Workload` (latency: fixed-length requests, one at a time), `ThroughputWorkload`
(nano-vllm's: every request at once, lengths drawn from ranges) and `OnlineWorkload` (short requests arriving
over time, Poisson, with long prompts among them), each generating the same random-token requests for every
engine from its seed. The last two can put a shared prefix in front of every prompt (`prefix_len`,
`num_prefixes`: a system prompt, M6's prefix cache), drawn from a generator of its own so that a workload
without one is exactly what it was."""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from shared.tools.bench.checks import BenchError

PREFIX_SEED_SALT = 0x5EED_9F1C  # the prefixes' generator: the workload's seed plus this (the requests' is the seed)


def _check_prefix(prefix_len: int, num_prefixes: int) -> None:
    if prefix_len < 0:
        raise BenchError(f"prefix_len must be >= 0 tokens, got {prefix_len}")
    if num_prefixes < 1:
        raise BenchError(f"num_prefixes must be >= 1, got {num_prefixes}")


def shared_prefixes(seed: int, prefix_len: int, num_prefixes: int, num_requests: int,
                    vocab_size: int) -> list[list[int]]:
    """The prefix of each of `num_requests` requests: `num_prefixes` distinct random prefixes of `prefix_len` ids
    (avoiding the first 16), each request's drawn uniformly at random, all from a generator of their own seeded
    from `seed` (so the requests' own draws are untouched). `prefix_len` 0: an empty prefix each, nothing drawn."""
    if prefix_len == 0:
        return [[] for _ in range(num_requests)]
    g = torch.Generator().manual_seed(seed + PREFIX_SEED_SALT)
    prefixes = [torch.randint(16, vocab_size, (prefix_len,), generator=g).tolist() for _ in range(num_prefixes)]
    which = torch.randint(0, num_prefixes, (num_requests,), generator=g).tolist()
    return [prefixes[i] for i in which]


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
    Throughput = output tokens / wall time of the whole batch.

    `prefix_len` > 0: every prompt starts with a shared prefix of that many tokens (a system prompt) and the
    drawn prompt follows it (the user's turn); there are `num_prefixes` distinct prefixes and each request's is
    drawn at random, from a generator of its own seeded from `seed` (`shared_prefixes`). The default, 0, adds
    nothing and draws nothing: the requests are those of a workload without the fields."""

    num_requests: int
    prompt_len: tuple[int, int]
    output_len: tuple[int, int]
    prefix_len: int = 0  # tokens of a shared prefix in front of every prompt
    num_prefixes: int = 1  # distinct prefixes; each request's drawn at random (seeded)
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
        _check_prefix(self.prefix_len, self.num_prefixes)

    def requests(self, vocab_size: int) -> list[tuple[list[int], int]]:
        """(prompt token ids, output length) per request, the same for every engine; the prompt is the request's
        shared prefix (if any) followed by its drawn tokens."""
        g = torch.Generator().manual_seed(self.seed)

        def draw(lo: int, hi: int) -> int:
            return int(torch.randint(lo, hi + 1, (1,), generator=g))

        prefixes = shared_prefixes(self.seed, self.prefix_len, self.num_prefixes, self.num_requests, vocab_size)
        out = []
        for prefix in prefixes:
            p, o = draw(*self.prompt_len), draw(*self.output_len)
            out.append((prefix + torch.randint(16, vocab_size, (p,), generator=g).tolist(), o))
        return out

    def max_request_len(self) -> int:
        """Prefix + prompt + output tokens of the longest request the workload can draw (what max_model_len must hold)."""
        return self.prefix_len + self.prompt_len[1] + self.output_len[1]


@dataclass
class OnlineWorkload:
    """A server's day in miniature: `num_requests` short requests arriving as a Poisson process at `rate` per
    second (or at the fixed times `arrivals`, in seconds), and `num_long` long prompts arriving evenly spaced
    across the short requests' span (at 1/(num_long+1), 2/(num_long+1), ... of it). Lengths are drawn uniformly
    from [lo, hi], token ids at random, EOS ignored; every engine gets the same requests at the same times.
    `behind_s`: a short request arriving within this many seconds after a long prompt is "behind" it.

    `prefix_len` > 0: every prompt, short and long, starts with a shared prefix of that many tokens (a system
    prompt) and the drawn prompt follows it; there are `num_prefixes` distinct prefixes and each request's is
    drawn at random, from a generator of its own seeded from `seed` (`shared_prefixes`; short requests in
    arrival order, then the long ones). The default, 0, adds nothing and draws nothing."""

    num_requests: int = 48
    prompt_len: tuple[int, int] = (32, 128)
    output_len: tuple[int, int] = (64, 192)
    rate: float = 4.0  # short requests per second (Poisson)
    num_long: int = 3
    long_len: tuple[int, int] = (2000, 6000)
    long_output_len: int = 16
    behind_s: float = 2.0
    prefix_len: int = 0  # tokens of a shared prefix in front of every prompt
    num_prefixes: int = 1  # distinct prefixes; each request's drawn at random (seeded)
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
        _check_prefix(self.prefix_len, self.num_prefixes)
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

        shorts, longs = self.arrival_times(), self.long_arrival_times()
        prefixes = shared_prefixes(self.seed, self.prefix_len, self.num_prefixes, len(shorts) + len(longs), vocab_size)
        out = []
        for i, t in enumerate(shorts):
            p, o = draw(*self.prompt_len), draw(*self.output_len)
            ids = prefixes[i] + torch.randint(16, vocab_size, (p,), generator=g).tolist()
            out.append((f"short-{i}", t, ids, o, False))
        for i, t in enumerate(longs):
            p = draw(*self.long_len)
            ids = prefixes[len(shorts) + i] + torch.randint(16, vocab_size, (p,), generator=g).tolist()
            out.append((f"long-{i}", t, ids, self.long_output_len, True))
        return sorted(out, key=lambda r: r[1])  # stable: a long prompt due with a short one follows it

    def max_request_len(self) -> int:
        """Prefix + prompt + output tokens of the longest request the workload can draw (what max_model_len must hold)."""
        longest = self.prompt_len[1] + self.output_len[1]
        longest = max(longest, self.long_len[1] + self.long_output_len) if self.num_long else longest
        return self.prefix_len + longest
