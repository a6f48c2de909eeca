"""M6 — prefix caching: full KV blocks are kept by a hash of their prefix; a prompt that starts like an earlier one skips it."""

from m6_prefix.engine import LLM, LLMEngine
from shared.sampling import SamplingParams

__all__ = ["LLM", "LLMEngine", "SamplingParams"]
