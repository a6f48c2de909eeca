"""The engine interface every milestone keeps, written down: what `LLM.generate`, the CLI and the benchmark rely on.

A milestone's `LLMEngine` is constructed as `LLMEngine(config: EngineConfig, **options)`, where the options
(max_num_seqs, block_size, ...) are the keyword arguments of its `__init__`, and then driven online:
`add_request` between any two steps, `step` until `has_unfinished_requests` is false, `abort_request` at
any time. `tests/kept/every.py` checks every engine against this Protocol.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from shared.config import ModelConfig
from shared.inputs import Prompt
from shared.metrics import EngineStats
from shared.outputs import RequestOutput
from shared.sampling import SamplingParams
from shared.tokenizer import Tokenizer


@runtime_checkable
class Engine(Protocol):
    tokenizer: Tokenizer
    model_config: ModelConfig
    max_model_len: int  # the context: prompt + output tokens of one sequence
    device: str  # "cpu", "cuda", "cuda:1"
    dtype: str  # "float32", "bfloat16", "float16"
    stats: EngineStats | None  # per-step figures; None for an engine that records none (m1)

    def add_request(self, prompt: Prompt, params: SamplingParams, request_id: str | None = None) -> str:
        """Validate and queue a request; returns its id. A bad request raises ValueError and changes nothing."""
        ...

    def abort_request(self, request_id: str) -> None:
        """Stop a request wherever it is and free its memory; an unknown or finished id is ignored."""
        ...

    def step(self) -> list[RequestOutput]:
        """Advance every scheduled request by one model step; returns the requests that advanced."""
        ...

    def has_unfinished_requests(self) -> bool:
        ...
