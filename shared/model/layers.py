"""The building blocks of a Qwen3 layer: RMSNorm, rotary embedding, SwiGLU MLP, and the Linear seam.

Each op follows HuggingFace's arithmetic order exactly (RMSNorm in float32, rotate-half RoPE), so that
the float32 model matches `transformers` to rounding error.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

LinearFactory = Callable[[int, int, bool], nn.Module]  # (in_features, out_features, bias) -> a module y = x W^T (+ b)


def make_linear(in_features: int, out_features: int, bias: bool = False) -> nn.Module:
    """The default `LinearFactory`: every projection of the model is built by the factory handed to
    `Qwen3ForCausalLM`, so m7 builds the same model with a GPTQ 4-bit linear without editing this code."""
    return nn.Linear(in_features, out_features, bias=bias)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()  # the variance of bf16 activations is computed in float32, as HF does
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


class RotaryEmbedding(nn.Module):
    """Rotate-half RoPE with a float32 cos/sin table for `max_positions`, built on first use per device."""

    def __init__(self, head_dim: int, max_positions: int, theta: float) -> None:
        super().__init__()
        self.head_dim, self.max_positions, self.theta = head_dim, max_positions, theta
        self._cos: torch.Tensor | None = None  # plain attributes, not buffers: model.to(bf16) must not round them
        self._sin: torch.Tensor | None = None

    def _tables(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        if self._cos is None or self._cos.device != device:
            inv_freq = 1.0 / (self.theta ** (torch.arange(0, self.head_dim, 2, dtype=torch.float) / self.head_dim))
            freqs = torch.arange(self.max_positions, dtype=torch.float)[:, None] * inv_freq[None, :]
            emb = torch.cat((freqs, freqs), dim=-1)  # [max_positions, head_dim]
            self._cos, self._sin = emb.cos().to(device), emb.sin().to(device)
        return self._cos, self._sin

    @staticmethod
    def rotate_half(x: torch.Tensor) -> torch.Tensor:
        x1, x2 = x.chunk(2, dim=-1)
        return torch.cat((-x2, x1), dim=-1)

    def forward(self, positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # q: [T, n_heads, head_dim], k: [T, n_kv_heads, head_dim], positions: [T]
        cos_table, sin_table = self._tables(positions.device)
        cos = cos_table[positions].to(q.dtype)[:, None, :]  # [T, 1, head_dim]
        sin = sin_table[positions].to(q.dtype)[:, None, :]
        q = q * cos + self.rotate_half(q) * sin
        k = k * cos + self.rotate_half(k) * sin
        return q, k


class MLP(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x))."""

    def __init__(self, hidden_size: int, intermediate_size: int, linear_factory: LinearFactory = make_linear) -> None:
        super().__init__()
        self.gate_proj = linear_factory(hidden_size, intermediate_size, False)
        self.up_proj = linear_factory(hidden_size, intermediate_size, False)
        self.down_proj = linear_factory(intermediate_size, hidden_size, False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))
