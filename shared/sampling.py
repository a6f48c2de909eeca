"""Sampling parameters (validated) and the sampler: greedy, temperature, top-k, top-p, per-request seeds.

The sampler is batched: one call turns logits [B, V] into B next tokens, each row with its own
parameters. Randomness uses the exponential-race trick (argmax of p / E with E ~ Exp(1)), which samples
exactly from p and lets every row draw its noise from its own `torch.Generator`, so a seeded request
gives the same tokens whatever else is in the batch.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import torch

from shared.config import SEED_LIMIT, check_int

SAMPLING_EPS = 1e-5  # a temperature below this is greedy (vLLM's _SAMPLING_EPS): logits / 1e-40 would overflow


def _number(name: str, value, allowed: str) -> float:
    """`value` as a float if it is a finite real number (not a bool), else a ValueError naming `name`."""
    if isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    raise ValueError(f"{name} must be a finite number {allowed}, got {value!r}")


@dataclass(frozen=True)
class SamplingParams:
    """How to pick tokens for one request; validated when built and immutable afterwards (a request keeps
    the params it was given). A temperature below `SAMPLING_EPS` (1e-5), 0 included, means greedy."""

    temperature: float = 1.0
    top_k: int = 0  # 0 (or -1) keeps every token
    top_p: float = 1.0  # keep the smallest set of tokens whose probability reaches top_p
    max_tokens: int = 16
    seed: int | None = None  # in [0, 2**64); None: drawn from the engine's generator
    ignore_eos: bool = False
    stop: str | tuple[str, ...] | None = None  # generation ends (finish_reason "stop") when the text contains one
    n: int = 1  # completions of the prompt (parallel sampling), returned as RequestOutput.outputs[0..n-1]

    def __post_init__(self) -> None:
        def put(name: str, value) -> None:  # the dataclass is frozen: normalised values go in this way
            object.__setattr__(self, name, value)

        temperature = _number("temperature", self.temperature, f">= 0 (below {SAMPLING_EPS:g} means greedy)")
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0 (below {SAMPLING_EPS:g} means greedy), got {temperature}")
        top_p = _number("top_p", self.top_p, "in (0, 1]")
        if not 0.0 < top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {top_p}")
        put("temperature", temperature)
        put("top_p", top_p)
        put("top_k", max(0, check_int("top_k", self.top_k, -1, hint=" (0 or -1 disables it)")))
        put("max_tokens", check_int("max_tokens", self.max_tokens, 1))
        put("n", check_int("n", self.n, 1))
        if self.seed is not None:
            put("seed", check_int("seed", self.seed, 0, SEED_LIMIT, high="2**64", hint=" (or None)"))
        if not isinstance(self.ignore_eos, bool):
            raise ValueError(f"ignore_eos must be True or False, got {self.ignore_eos!r}")
        stop = (self.stop,) if isinstance(self.stop, str) else self.stop
        if stop is not None:
            if not isinstance(stop, list | tuple) or not all(isinstance(s, str) and s for s in stop):
                raise ValueError(f"stop must be a non-empty string or a list of them, got {self.stop!r}")
            put("stop", tuple(stop) or None)

    @property
    def greedy(self) -> bool:
        return self.temperature < SAMPLING_EPS


def apply_top_k_top_p(logits: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """Mask (to -inf) every token outside each row's top-k and top-p set.

    logits: [B, V] float; top_k: [B] long (0 = off); top_p: [B] float (1.0 = off). Exactly k tokens survive
    top-k even with ties (ranks come from a sort, not from a threshold value).
    """
    sorted_logits, order = logits.sort(dim=-1, descending=True)  # [B, V]
    vocab = logits.shape[-1]
    rank = torch.arange(vocab, device=logits.device)[None, :]
    k = torch.where(top_k > 0, top_k, vocab).clamp(max=vocab)[:, None]
    drop = rank >= k
    probs = sorted_logits.masked_fill(drop, float("-inf")).softmax(dim=-1)
    # keep a token if the probability mass strictly before it is < top_p (so the top token always stays)
    mass_before = probs.cumsum(dim=-1) - probs
    drop |= (mass_before >= top_p[:, None]) & (top_p[:, None] < 1.0)  # rows with top_p=1 skip it: no rounding loss
    masked_sorted = sorted_logits.masked_fill(drop, float("-inf"))
    return torch.empty_like(logits).scatter_(-1, order, masked_sorted)


def sampling_probs(logits: torch.Tensor, params: list[SamplingParams]) -> torch.Tensor:
    """The distribution each row samples from: softmax(logits / temperature) restricted to top-k and top-p.

    logits: [B, V] float32 -> probs [B, V]. Greedy rows are computed at temperature 1 (they use argmax).
    """
    device = logits.device
    temps = torch.tensor([p.temperature if not p.greedy else 1.0 for p in params], device=device)
    logits = logits / temps[:, None]
    if any(p.top_k or p.top_p < 1.0 for p in params):
        top_k = torch.tensor([p.top_k for p in params], device=device)
        top_p = torch.tensor([p.top_p for p in params], device=device, dtype=logits.dtype)
        logits = apply_top_k_top_p(logits, top_k, top_p)
    return logits.softmax(dim=-1)


class Sampler:
    """logits [B, V] + one SamplingParams and one generator per row -> next token ids [B]."""

    def __call__(self, logits: torch.Tensor, params: list[SamplingParams],
                 generators: list[torch.Generator]) -> torch.Tensor:
        greedy_tokens = logits.argmax(dim=-1)
        if all(p.greedy for p in params):
            return greedy_tokens
        probs = sampling_probs(logits, params)
        # exponential race: argmax(p / E), E ~ Exp(1) i.i.d., picks token i with probability p_i
        noise = torch.stack([torch.empty_like(probs[0]).exponential_(generator=g) for g in generators])
        noise.clamp_(min=1e-30)  # a draw of exactly 0 would make p/0 = inf (or nan for a masked token)
        sampled = (probs / noise).argmax(dim=-1)
        is_greedy = torch.tensor([p.greedy for p in params], device=logits.device)
        return torch.where(is_greedy, greedy_tokens, sampled)
