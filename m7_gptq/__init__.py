"""M7 — GPTQ 4-bit weights: quantize offline (`python -m m7_gptq.quantize`), load GPTQ checkpoints, dequant-matmul kernels."""

from m7_gptq.engine import LLM, LLMEngine
from shared.sampling import SamplingParams

__all__ = ["LLM", "LLMEngine", "SamplingParams"]
