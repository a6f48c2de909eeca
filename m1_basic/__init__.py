"""M1 — the basic engine: one request at a time, prefill then decode, contiguous KV cache, naive attention."""

from m1_basic.engine import LLM, LLMEngine
from shared.sampling import SamplingParams

__all__ = ["LLM", "LLMEngine", "SamplingParams"]
