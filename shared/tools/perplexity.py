"""Perplexity of the shared Qwen3 model on a token stream: exp of the mean next-token cross-entropy.

The stream is cut into non-overlapping windows of `window` tokens; each window is one forward pass from
position 0 (no KV cache, `WholeSequenceAttention`), and every position but the last predicts the next token.
M7 uses it to judge quantization on text the calibration never saw (shared/corpus.py).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from shared.attention import AttentionMetadata, WholeSequenceAttention


@torch.no_grad()
def perplexity(model, stream: torch.Tensor, window: int = 512, max_windows: int | None = None) -> float:
    """`model`: a shared Qwen3ForCausalLM; `stream`: [N] token ids on the model's device."""
    n = (len(stream) - 1) // window if max_windows is None else min(max_windows, len(stream) // window)
    if n < 1:
        raise ValueError(f"the stream has {len(stream)} tokens, fewer than one window of {window}")
    backend, metadata = WholeSequenceAttention(), AttentionMetadata()
    positions = torch.arange(window, device=stream.device)
    nll = 0.0
    for i in range(n):
        ids = stream[i * window:(i + 1) * window]
        logits = model.compute_logits(model(ids, positions, backend, metadata)[:-1])  # [window - 1, vocab] float32
        nll += F.cross_entropy(logits, ids[1:], reduction="sum").item()
    return math.exp(nll / (n * (window - 1)))
