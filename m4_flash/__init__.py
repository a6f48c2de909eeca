"""M4 — FlashAttention: one varlen attention over the paged cache for prefill and decode, backends chosen automatically."""

from m4_flash.engine import LLM, LLMEngine
from shared.sampling import SamplingParams

__all__ = ["LLM", "LLMEngine", "SamplingParams"]
