"""M5 — chunked prefill: prompt chunks and decodes share one token budget per step, so a long prompt never stalls decoding."""

from m5_chunked.engine import LLM, LLMEngine
from shared.sampling import SamplingParams

__all__ = ["LLM", "LLMEngine", "SamplingParams"]
