"""M2 — continuous batching: a scheduler runs many sequences per step (iteration-level), with preemption by recompute."""

from m2_batching.engine import LLM, LLMEngine
from shared.sampling import SamplingParams

__all__ = ["LLM", "LLMEngine", "SamplingParams"]
