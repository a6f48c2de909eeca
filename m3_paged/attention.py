"""M3's attention: K/V live in blocks, and each sequence's block table says where.

Every layer does two things for the step's flat batch (decoding sequences first, then prefills):

1. Write. Each new token's K/V goes to its slot, `block * block_size + offset`; the model runner has
   turned the block tables into that per-token `slot_mapping` once for the whole step.
2. Attend. A prefill (start 0: nothing cached yet) attends causally over its own fresh K/V, and needs
   no cache read. A decode's single query attends over every cached position of its sequence, which
   are scattered over blocks. That read is the paged-attention problem, and there are two backends:

   - `TorchPagedBackend`, the reference: gather the blocks named by the block table into one contiguous
     tensor (a copy), then the same two-matmul `decode_attention` as m2.
   - `TritonPagedBackend`: one kernel launch for all decoding sequences. Each program walks one sequence's
     block table and reads K/V in place, one block at a time, with an online softmax
     (`paged_attention_kernel.py`). It is chosen automatically on CUDA.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from functools import cached_property

import torch

from m3_paged.kv_cache import PagedKVCache
from shared.attention import AttentionBackend, AttentionMetadata, causal_attention, decode_attention

log = logging.getLogger(__name__)
BACKENDS = ("auto", "torch", "triton")


@dataclass
class PagedMetadata(AttentionMetadata):
    kv_cache: PagedKVCache
    slot_mapping: torch.Tensor  # [T] long: the flat cache slot of each new token
    num_decodes: int  # the first num_decodes sequences decode one token each (rows 0 .. num_decodes-1)
    starts: list[int]  # per sequence: position of its first new token (0 for a prefill)
    lens: list[int]  # per sequence: new tokens in this step
    block_tables: torch.Tensor  # [num_decodes, max_blocks] int32, padded with 0: the decoding sequences' tables
    context_lens: torch.Tensor  # [num_decodes] int32: positions each decoding sequence attends to (its new token included)

    @cached_property
    def decode_gather_index(self) -> torch.Tensor:
        """The reference's gather: flat slots of every decoding sequence's positions 0 .. len-1, end to end."""
        size = self.kv_cache.block_size
        offsets = torch.arange(size, device=self.block_tables.device)
        slots = (self.block_tables.long()[:, :, None] * size + offsets).flatten(1)  # [num_decodes, max_blocks * size]
        positions = torch.arange(slots.shape[1], device=slots.device)
        return slots[positions[None, :] < self.context_lens[:, None]]  # row by row: sequence 0's slots, then 1's...


class TorchPagedBackend(AttentionBackend):
    """The reference: write by slot mapping; decodes gather their blocks, then attend as m2 does."""

    name = "paged-torch"

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layer_idx: int,
                metadata: PagedMetadata) -> torch.Tensor:
        md = metadata
        md.kv_cache.write(layer_idx, md.slot_mapping, k, v)
        out = torch.empty_like(q)  # [T, n_heads, d]
        nd = md.num_decodes
        if nd:
            out[:nd] = self.decode(q[:nd], layer_idx, md)
        offset = nd
        for start, n in zip(md.starts[nd:], md.lens[nd:]):  # prefills
            rows = slice(offset, offset + n)
            if start == 0:  # nothing cached before: the keys are exactly the new ones
                out[rows] = causal_attention(q[rows], k[rows], v[rows], q_start=0)
            else:
                raise NotImplementedError("a prefill that continues a cached sequence arrives with chunked prefill (M5)")
            offset += n
        return out

    def decode(self, q: torch.Tensor, layer: int, md: PagedMetadata) -> torch.Tensor:
        """q: [num_decodes, n_heads, d] -> [num_decodes, n_heads, d]."""
        cache = md.kv_cache
        index = md.decode_gather_index
        keys = cache.k[layer].flatten(0, 1)[index]  # [sum of context lens, kv_heads, d]: the gather (a copy)
        values = cache.v[layer].flatten(0, 1)[index]
        out = torch.empty_like(q)
        offset = 0
        for i in range(q.shape[0]):
            n = md.starts[i] + 1  # a decode attends to every position up to and including its new token
            out[i] = decode_attention(q[i], keys[offset:offset + n], values[offset:offset + n])
            offset += n
        return out


class TritonPagedBackend(TorchPagedBackend):
    """Decodes read K/V in place through the block table, in one Triton kernel launch."""

    name = "paged-triton"

    def decode(self, q: torch.Tensor, layer: int, md: PagedMetadata) -> torch.Tensor:
        from m3_paged.paged_attention_kernel import paged_decode_attention

        return paged_decode_attention(q, md.kv_cache.k[layer], md.kv_cache.v[layer], md.block_tables, md.context_lens)


def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def choose_backend(name: str, device: str) -> AttentionBackend:
    """`auto`: the Triton kernel on CUDA when Triton is installed, else the PyTorch reference. The choice is logged."""
    if name not in BACKENDS:
        raise ValueError(f"attention_backend must be one of {list(BACKENDS)}, got {name!r}")
    interpret = os.environ.get("TRITON_INTERPRET") == "1"
    if name == "auto":
        name = "triton" if device.startswith("cuda") and triton_available() else "torch"
    if name == "triton":
        if not triton_available():
            raise ValueError("attention_backend='triton' needs the triton package: pip install -e '.[gpu]'")
        if not device.startswith("cuda") and not interpret:
            raise ValueError("attention_backend='triton' runs on CUDA; on CPU only under TRITON_INTERPRET=1 (slow, for tests)")
    backend = TritonPagedBackend() if name == "triton" else TorchPagedBackend()
    log.info("attention backend: %s (device %s)", backend.name, device)
    return backend
