"""Request and Sequence: what a user asked for, and the token stream an engine grows for it.

A Request holds the prompt, the sampling parameters and the timing; it owns one Sequence per
completion (`SamplingParams.n`; from M3 they share the prompt's KV blocks, copy-on-write). A Sequence
moves through a small state machine:

    WAITING ──► RUNNING ──► FINISHED
                  │  ▲
                  ▼  │
               PREEMPTED        (its KV cache was dropped; it is recomputed when rescheduled)

`Sequence.append_token` is the one place where stop conditions are checked, so every engine stops
for the same reasons: an EOS token, `max_tokens`, a stop string, or the model's context length.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Container
from enum import Enum

import torch

from shared.sampling import SamplingParams, TokenLogprobs
from shared.tokenizer import IncrementalDetokenizer, Tokenizer


class SequenceStatus(Enum):
    WAITING = "waiting"
    RUNNING = "running"
    PREEMPTED = "preempted"
    FINISHED = "finished"


ALLOWED = {
    SequenceStatus.WAITING: {SequenceStatus.RUNNING, SequenceStatus.FINISHED},
    SequenceStatus.RUNNING: {SequenceStatus.PREEMPTED, SequenceStatus.FINISHED},
    SequenceStatus.PREEMPTED: {SequenceStatus.RUNNING, SequenceStatus.FINISHED},
    SequenceStatus.FINISHED: set(),
}

_seq_ids = itertools.count()


class Sequence:
    """One completion: the prompt's token ids plus the tokens generated so far."""

    def __init__(self, request: Request, index: int, tokenizer: Tokenizer, generator: torch.Generator) -> None:
        self.seq_id = next(_seq_ids)
        self.request = request
        self.index = index  # which of the request's n completions this is
        self.output_token_ids: list[int] = []
        self.status = SequenceStatus.WAITING
        self.finish_reason: str | None = None  # "stop", "length" or "abort"
        self.detokenizer = IncrementalDetokenizer(tokenizer, request.prompt_token_ids)
        self.generator = generator
        self.num_preemptions = 0
        # one entry per output token when the request asks for log-probabilities (SamplingParams.logprobs)
        self.logprobs: list[TokenLogprobs] | None = None if request.params.logprobs is None else []

    def __repr__(self) -> str:
        return f"Sequence(id={self.seq_id}, {self.status.name}, tokens={self.num_tokens})"

    @property
    def prompt_token_ids(self) -> list[int]:
        return self.request.prompt_token_ids

    @property
    def token_ids(self) -> list[int]:
        return self.request.prompt_token_ids + self.output_token_ids

    @property
    def num_tokens(self) -> int:
        return len(self.request.prompt_token_ids) + len(self.output_token_ids)

    def token_ids_between(self, start: int, end: int) -> list[int]:
        """Token ids of positions start .. end-1, without building the whole token list (a decode reads one)."""
        p = len(self.request.prompt_token_ids)
        if start >= p:
            return self.output_token_ids[start - p:end - p]
        return self.request.prompt_token_ids[start:end] + self.output_token_ids[:max(0, end - p)]

    @property
    def last_token_id(self) -> int:
        return self.output_token_ids[-1] if self.output_token_ids else self.request.prompt_token_ids[-1]

    @property
    def text(self) -> str:
        return self.detokenizer.text

    @property
    def is_finished(self) -> bool:
        return self.status is SequenceStatus.FINISHED

    def set_status(self, status: SequenceStatus) -> None:
        if status not in ALLOWED[self.status]:
            raise RuntimeError(f"sequence {self.seq_id}: illegal transition {self.status.name} -> {status.name}")
        if status is SequenceStatus.PREEMPTED:
            self.num_preemptions += 1
        self.status = status

    def finish(self, reason: str) -> str:
        """Mark the sequence finished; returns the text the detokenizer was still holding back."""
        self.set_status(SequenceStatus.FINISHED)
        self.finish_reason = reason
        self.request.on_sequence_finished()
        return self.detokenizer.flush()

    def append_token(self, token_id: int, eos_token_ids: tuple[int, ...], max_model_len: int,
                     logprobs: TokenLogprobs | None = None) -> str:
        """Record a generated token (and its log-probabilities, if the request asked), check every stop
        condition, and return the new text (a delta)."""
        params = self.request.params
        self.output_token_ids.append(token_id)
        if self.logprobs is not None and logprobs is not None:
            self.logprobs.append(logprobs)
        self.request.on_token()
        if token_id in eos_token_ids and not params.ignore_eos:
            return self.finish("stop")
        delta = self.detokenizer.step(token_id)
        if params.stop and delta:
            text = self.detokenizer.text
            hits = [i for s in params.stop if (i := text.find(s, max(0, len(text) - len(delta) - len(s)))) >= 0]
            if hits:
                cut = min(hits)
                self.finish("stop")
                self.detokenizer.text = text[:cut]  # the stop string itself is not returned
                return delta[: max(0, len(delta) - (len(text) - cut))]
        if len(self.output_token_ids) >= params.max_tokens or self.num_tokens >= max_model_len:
            delta += self.finish("length")
        return delta


_auto_request_ids = itertools.count()


def claim_request_id(request_id: str | None, live: Container[str]) -> str:
    """The id a new request gets: the caller's, if no unfinished request holds it, else a clear error; or,
    when none is given, the next counter value that no unfinished request holds (a user may have taken "7")."""
    if request_id is not None:
        if not isinstance(request_id, str) or not request_id:
            raise ValueError(f"request_id must be a non-empty string, got {request_id!r}")
        if request_id in live:
            raise ValueError(f"request_id {request_id!r} is already in use by an unfinished request")
        return request_id
    while (rid := str(next(_auto_request_ids))) in live:
        pass
    return rid


class Request:
    """A user's request: prompt, parameters, timestamps, and its sequences."""

    def __init__(self, request_id: str, prompt: str | None, prompt_token_ids: list[int], params: SamplingParams,
                 tokenizer: Tokenizer, generators: list[torch.Generator]) -> None:
        self.request_id = request_id
        self.prompt = prompt
        self.prompt_token_ids = prompt_token_ids
        self.params = params
        self.arrival_time = time.perf_counter()
        self.first_token_time: float | None = None
        self.finish_time: float | None = None
        self.seqs = [Sequence(self, i, tokenizer, g) for i, g in enumerate(generators)]  # one per completion

    def __repr__(self) -> str:
        return f"Request({self.request_id!r}, prompt_tokens={len(self.prompt_token_ids)}, seqs={self.seqs})"

    @property
    def is_finished(self) -> bool:
        return all(s.is_finished for s in self.seqs)

    def on_token(self) -> None:
        if self.first_token_time is None:
            self.first_token_time = time.perf_counter()

    def on_sequence_finished(self) -> None:
        if self.is_finished:
            self.finish_time = time.perf_counter()

    def abort(self) -> None:
        for seq in self.seqs:
            if not seq.is_finished:
                seq.finish("abort")
