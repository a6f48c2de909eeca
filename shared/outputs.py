"""What `generate()` returns: RequestOutput with one CompletionOutput per sequence, and per-request metrics."""

from __future__ import annotations

from dataclasses import dataclass

from shared.request import Request, Sequence
from shared.sampling import TokenLogprobs


def _visible_text(seq: Sequence) -> str:
    """The text a client may see now: while running, hold back the last (longest stop string - 1)
    characters, which could still turn out to be the start of a stop string (as vLLM does)."""
    stop = seq.request.params.stop
    if seq.is_finished or not stop:
        return seq.text
    hold = max(len(s) for s in stop) - 1
    return seq.text[: len(seq.text) - hold] if hold else seq.text


@dataclass
class CompletionOutput:
    index: int
    text: str
    token_ids: list[int]
    finish_reason: str | None  # "stop", "length", "abort", or None while still running
    logprobs: list[TokenLogprobs] | None = None  # one per token of token_ids, when SamplingParams.logprobs is set


@dataclass
class RequestMetrics:
    """Latency of one request, in seconds. TPOT is the mean gap between output tokens after the first."""

    arrival_time: float
    first_token_time: float | None
    finish_time: float | None
    num_prompt_tokens: int
    num_output_tokens: int
    num_preemptions: int = 0

    @property
    def ttft(self) -> float | None:
        return None if self.first_token_time is None else self.first_token_time - self.arrival_time

    @property
    def tpot(self) -> float | None:
        if self.finish_time is None or self.first_token_time is None or self.num_output_tokens < 2:
            return None
        return (self.finish_time - self.first_token_time) / (self.num_output_tokens - 1)

    @property
    def e2e(self) -> float | None:
        return None if self.finish_time is None else self.finish_time - self.arrival_time


@dataclass
class RequestOutput:
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput]
    finished: bool
    metrics: RequestMetrics

    @classmethod
    def from_request(cls, req: Request) -> RequestOutput:
        outs = [CompletionOutput(s.index, _visible_text(s), list(s.output_token_ids), s.finish_reason,
                                 None if s.logprobs is None else list(s.logprobs)) for s in req.seqs]
        metrics = RequestMetrics(
            arrival_time=req.arrival_time,
            first_token_time=req.first_token_time,
            finish_time=req.finish_time,
            num_prompt_tokens=len(req.prompt_token_ids),
            num_output_tokens=max(len(o.token_ids) for o in outs),
            num_preemptions=sum(s.num_preemptions for s in req.seqs),
        )
        return cls(req.request_id, req.prompt, list(req.prompt_token_ids), outs, req.is_finished, metrics)
