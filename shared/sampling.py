"""Sampling parameters (validated) and the sampler: penalties, greedy, temperature, min-p, top-k, top-p, seeded
draws, and per-token log-probabilities.

The sampler is batched: one call turns logits [B, V] into B next tokens, each row with its own parameters and
its own sequence (whose tokens the penalties read). A row goes through the steps in vLLM's order:

    raw logits ──► log-probabilities reported to the user (if asked: the model's own distribution)
               ──► repetition, frequency and presence penalties ──► greedy: argmax here
               ──► temperature ──► min-p ──► top-k / top-p ──► draw

Randomness uses the exponential-race trick (argmax of p / E with E ~ Exp(1)), which samples exactly from p
and lets every row draw its noise from its own `torch.Generator`, so a seeded request gives the same tokens
whatever else is in the batch.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence as Rows
from dataclasses import dataclass
from typing import Protocol

import torch

from shared.config import SEED_LIMIT, check_int

SAMPLING_EPS = 1e-5  # a temperature below this is greedy (vLLM's _SAMPLING_EPS): logits / 1e-40 would overflow
TOP_K_BEYOND_ANY_VOCAB = 2**31
MAX_LOGPROBS = 20  # alternatives a token may report (OpenAI's top_logprobs and vLLM's default max_logprobs)


def _number(name: str, value, allowed: str) -> float:
    """`value` as a float if it is a finite real number (not a bool), else a ValueError naming `name`."""
    if isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    raise ValueError(f"{name} must be a finite number {allowed}, got {value!r}")


def _in_range(name: str, value, low: float, high: float) -> float:
    number = _number(name, value, f"in [{low:g}, {high:g}]")
    if not low <= number <= high:
        raise ValueError(f"{name} must be in [{low:g}, {high:g}], got {number:g}")
    return number


@dataclass(frozen=True)
class SamplingParams:
    """How to pick tokens for one request; validated when built and immutable afterwards (a request keeps
    the params it was given). A temperature below `SAMPLING_EPS` (1e-5), 0 included, means greedy."""

    temperature: float = 1.0
    top_k: int = 0  # 0 (or -1) keeps every token
    top_p: float = 1.0  # keep the smallest set of tokens whose probability reaches top_p
    min_p: float = 0.0  # drop tokens less likely than min_p times the most likely one (0 = off)
    presence_penalty: float = 0.0  # subtracted once from every token already generated (OpenAI's, in [-2, 2])
    frequency_penalty: float = 0.0  # subtracted per occurrence in the generated tokens (OpenAI's, in [-2, 2])
    repetition_penalty: float = 1.0  # divides positive (multiplies negative) logits of prompt and output tokens
    max_tokens: int = 16
    seed: int | None = None  # in [0, 2**64); None: drawn from the engine's generator
    ignore_eos: bool = False
    stop: str | tuple[str, ...] | None = None  # generation ends (finish_reason "stop") when the text contains one
    n: int = 1  # completions of the prompt (parallel sampling), returned as RequestOutput.outputs[0..n-1]
    logprobs: int | None = None  # report each token's log-probability and this many most likely alternatives

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
        top_k = check_int("top_k", self.top_k, -1, hint=" (0 or -1 disables it)")
        # a top_k beyond any vocabulary keeps every token, exactly as 0 does (and 10**30 would overflow a tensor)
        put("top_k", 0 if top_k >= TOP_K_BEYOND_ANY_VOCAB else max(0, top_k))
        put("min_p", _in_range("min_p", self.min_p, 0.0, 1.0))
        put("presence_penalty", _in_range("presence_penalty", self.presence_penalty, -2.0, 2.0))
        put("frequency_penalty", _in_range("frequency_penalty", self.frequency_penalty, -2.0, 2.0))
        repetition = _number("repetition_penalty", self.repetition_penalty, "> 0 (1 disables it)")
        if repetition <= 0:
            raise ValueError(f"repetition_penalty must be > 0 (1 disables it), got {repetition:g}")
        put("repetition_penalty", repetition)
        put("max_tokens", check_int("max_tokens", self.max_tokens, 1))
        put("n", check_int("n", self.n, 1))
        if self.seed is not None:
            put("seed", check_int("seed", self.seed, 0, SEED_LIMIT, high="2**64", hint=" (or None)"))
        if self.logprobs is not None:
            put("logprobs", check_int("logprobs", self.logprobs, 0, MAX_LOGPROBS + 1, hint=" (or None)"))
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

    @property
    def penalized(self) -> bool:
        return bool(self.presence_penalty or self.frequency_penalty) or self.repetition_penalty != 1.0


class SamplingRow(Protocol):
    """What the sampler reads from a row's sequence (shared.request.Sequence has all of it)."""

    @property
    def request(self): ...  # .params: SamplingParams
    generator: torch.Generator
    output_token_ids: list[int]

    @property
    def prompt_token_ids(self) -> list[int]: ...


@dataclass(frozen=True)
class TokenLogprobs:
    """One generated token's log-probability under the model (before penalties, temperature and filters, as
    vLLM reports by default), its rank (1 = the most likely token), and the `logprobs` most likely tokens."""

    token_id: int
    logprob: float
    rank: int
    top: tuple[tuple[int, float], ...]  # (token id, log-probability), most likely first


@dataclass
class SamplerOutput:
    token_ids: torch.Tensor  # [B] long
    logprobs: list[TokenLogprobs | None]  # per row; None where the request did not ask


def apply_penalties(logits: torch.Tensor, rows: Rows[SamplingRow]) -> torch.Tensor:
    """Repetition (HF/CTRL: prompt and output tokens), then frequency and presence (OpenAI: output tokens only).

    logits: [B, V] float; only the rows that use a penalty are touched (a new tensor is returned).
    """
    logits = logits.clone()
    vocab = logits.shape[-1]
    for i, row in enumerate(rows):
        p = row.request.params
        if not p.penalized:
            continue
        out = torch.tensor(row.output_token_ids, dtype=torch.long, device=logits.device)
        if p.repetition_penalty != 1.0:
            seen = torch.cat([torch.tensor(row.prompt_token_ids, dtype=torch.long, device=logits.device), out]).unique()
            picked = logits[i, seen]
            logits[i, seen] = torch.where(picked > 0, picked / p.repetition_penalty, picked * p.repetition_penalty)
        if p.frequency_penalty or p.presence_penalty:
            counts = torch.bincount(out, minlength=vocab).to(logits.dtype)
            logits[i] -= p.frequency_penalty * counts + p.presence_penalty * (counts > 0).to(logits.dtype)
    return logits


def apply_min_p(logits: torch.Tensor, min_p: torch.Tensor) -> torch.Tensor:
    """Mask every token whose probability is below min_p times the row's largest. logits: [B, V]; min_p: [B]."""
    probs = logits.softmax(dim=-1)
    threshold = probs.amax(dim=-1, keepdim=True) * min_p[:, None]
    return logits.masked_fill(probs < threshold, float("-inf"))


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
    """The distribution each row samples from: softmax(logits / temperature) restricted to min-p, top-k and
    top-p. logits: [B, V] float32 (penalties already applied) -> probs [B, V]. Greedy rows are computed at
    temperature 1 (they use argmax)."""
    device = logits.device
    temps = torch.tensor([p.temperature if not p.greedy else 1.0 for p in params], device=device)
    logits = logits / temps[:, None]
    if any(p.min_p for p in params):
        logits = apply_min_p(logits, torch.tensor([p.min_p for p in params], device=device, dtype=logits.dtype))
    if any(p.top_k or p.top_p < 1.0 for p in params):
        top_k = torch.tensor([p.top_k for p in params], device=device)
        top_p = torch.tensor([p.top_p for p in params], device=device, dtype=logits.dtype)
        logits = apply_top_k_top_p(logits, top_k, top_p)
    return logits.softmax(dim=-1)


def token_logprobs(logits: torch.Tensor, token_ids: torch.Tensor, rows: Rows[SamplingRow]) -> list[TokenLogprobs | None]:
    """The chosen token's log-probability, rank and top alternatives for every row that asked (logits: raw [B, V])."""
    wanted = [i for i, row in enumerate(rows) if row.request.params.logprobs is not None]
    result: list[TokenLogprobs | None] = [None] * len(rows)
    if not wanted:
        return result
    logp = logits[wanted].float().log_softmax(dim=-1)  # [W, V]
    chosen = token_ids[wanted]
    chosen_lp = logp.gather(-1, chosen[:, None])[:, 0]
    ranks = (logp > chosen_lp[:, None]).sum(dim=-1) + 1
    most = max(rows[i].request.params.logprobs for i in wanted)
    top_lp, top_ids = logp.topk(most, dim=-1) if most else (logp[:, :0], chosen[:, None][:, :0])
    for j, i in enumerate(wanted):
        k = rows[i].request.params.logprobs
        top = tuple(zip(top_ids[j, :k].tolist(), top_lp[j, :k].tolist(), strict=True))
        result[i] = TokenLogprobs(int(chosen[j]), float(chosen_lp[j]), int(ranks[j]), top)
    return result


class Sampler:
    """logits [B, V] + one sequence per row (its params, generator and tokens) -> next tokens and log-probs."""

    def __call__(self, logits: torch.Tensor, rows: Rows[SamplingRow]) -> SamplerOutput:
        params = [row.request.params for row in rows]
        raw = logits
        if any(p.penalized for p in params):
            logits = apply_penalties(logits, rows)
        greedy_tokens = logits.argmax(dim=-1)
        if all(p.greedy for p in params):
            tokens = greedy_tokens
        else:
            probs = sampling_probs(logits, params)
            # exponential race: argmax(p / E), E ~ Exp(1) i.i.d., picks token i with probability p_i
            noise = torch.stack([torch.empty_like(probs[0]).exponential_(generator=row.generator) for row in rows])
            noise.clamp_(min=1e-30)  # a draw of exactly 0 would make p/0 = inf (or nan for a masked token)
            sampled = (probs / noise).argmax(dim=-1)
            is_greedy = torch.tensor([p.greedy for p in params], device=logits.device)
            tokens = torch.where(is_greedy, greedy_tokens, sampled)
        return SamplerOutput(tokens, token_logprobs(raw, tokens, rows))
