"""M3 — paged KV cache: fixed-size blocks, block tables, copy-on-write for n > 1, and a paged-attention kernel."""

from m3_paged.engine import LLM, LLMEngine
from shared.sampling import SamplingParams

__all__ = ["LLM", "LLMEngine", "SamplingParams"]
