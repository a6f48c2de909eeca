"""M4's attention: one varlen description of the whole step, and backends chosen by name or automatically.

M3 split a step in two: decodes read the paged cache, prefills attended only to their own fresh tokens.
M4 describes every sequence the same way, as FlashAttention's varlen API and vLLM V1 do. The step's
new tokens lie end to end (`cu_seqlens_q` says where each sequence's rows start), and each sequence
attends to all `seq_lens[i]` positions it has: the cached context, then its new tokens. A decode is the
case q_len = 1, a fresh prompt the case seq_len = q_len, and a prefill that continues a cached sequence
(M5's chunks, M6's prefix hits) everything in between. Causality is aligned to the bottom right: new
token j of a sequence sits at position `seq_len - q_len + j` and sees the keys at positions up to that one.

Backends (`backends.py`), each with a stable name:

    naive       softmax(QKᵀ/√d + mask)·V over gathered K/V, the scores materialised: the baseline
    sdpa        torch's scaled_dot_product_attention over gathered K/V (ATen's flash kernel on CPU)
    triton      the project's FlashAttention-2-style kernel, K/V read in place (flash_attention_kernel.py)
    flash-attn  the flash-attn library's varlen function with a block table, when it is installed
    auto        CUDA: flash-attn if importable (and the block size suits it), else triton. CPU: sdpa.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from dataclasses import dataclass, field
from functools import cached_property

import torch

from m7_gptq.kv_cache import PagedKVCache
from shared.attention import AttentionBackend, AttentionMetadata

log = logging.getLogger(__name__)
BACKENDS = ("auto", "naive", "sdpa", "triton", "flash-attn")
FLASH_ATTN_BLOCK_MULTIPLE = 256  # flash-attn 2 reads a paged cache only in pages of a multiple of 256 tokens


@dataclass
class FlashMetadata(AttentionMetadata):
    """The varlen batch of one step, shared by all layers. vLLM V1's names in brackets."""

    kv_cache: PagedKVCache
    slot_mapping: torch.Tensor  # [T] long: flat cache slot (block * block_size + offset) of each new token
    cu_seqlens_q: torch.Tensor  # [S + 1] int32: sequence i's new tokens are rows cu[i] .. cu[i+1]-1  (query_start_loc)
    seq_lens: torch.Tensor  # [S] int32: positions sequence i attends to, cached context + new tokens  (seq_lens)
    block_table: torch.Tensor  # [S, max_blocks] int32, padded with block 0 (never read)  (block_table_tensor)
    max_seqlen_q: int  # (max_query_len)
    max_seqlen_k: int  # (max_seq_len)
    cu_seqlens_q_cpu: list[int]  # the same lengths on the host, so that a backend's Python loop never waits on the device
    query_lens_cpu: list[int]
    seq_lens_cpu: list[int]
    num_decodes: int  # the leading sequences with one new token each (the scheduler places decodes first)
    _tiles: dict[int, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict, repr=False)

    @property
    def num_seqs(self) -> int:
        return len(self.seq_lens_cpu)

    @cached_property
    def cu_seqlens_k_cpu(self) -> list[int]:
        """Where each sequence's keys start, its positions end to end (as `gather_index` lays them out)."""
        out = [0]
        for n in self.seq_lens_cpu:
            out.append(out[-1] + n)
        return out

    @cached_property
    def cu_seqlens_k(self) -> torch.Tensor:
        """[S + 1] int32 on the device: what flash-attn's varlen function takes for the keys (built once per step)."""
        return torch.tensor(self.cu_seqlens_k_cpu, dtype=torch.int32, device=self.seq_lens.device)

    @cached_property
    def gather_index(self) -> torch.Tensor:
        """Flat cache slots of positions 0 .. seq_len-1 of every sequence, end to end: what a gathering backend copies."""
        size = self.kv_cache.block_size
        slots = (self.block_table.long()[:, :, None] * size + torch.arange(size, device=self.block_table.device)).flatten(1)
        positions = torch.arange(slots.shape[1], device=slots.device)
        return slots[positions[None, :] < self.seq_lens[:, None]]  # row by row: sequence 0's slots, then 1's ...

    def gather(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Every sequence's keys and values, copied out of the blocks into two [sum(seq_lens), kv_heads, d] tensors."""
        k, v = self.kv_cache.k[layer], self.kv_cache.v[layer]
        return k.flatten(0, 1)[self.gather_index], v.flatten(0, 1)[self.gather_index]

    def query_tiles(self, block_q: int) -> tuple[torch.Tensor, torch.Tensor]:
        """For a kernel that gives each program `block_q` queries of one sequence: the program's sequence and
        its first query (an index into that sequence's new tokens). Built on the host once per step."""
        if block_q not in self._tiles:
            seqs, starts = [], []
            for i, n in enumerate(self.query_lens_cpu):
                for start in range(0, n, block_q):
                    seqs.append(i)
                    starts.append(start)
            device = self.seq_lens.device
            self._tiles[block_q] = (torch.tensor(seqs, dtype=torch.int32, device=device),
                                    torch.tensor(starts, dtype=torch.int32, device=device))
        return self._tiles[block_q]


def build_metadata(cache: PagedKVCache, block_tables: list[list[int]], starts: list[int], query_lens: list[int],
                   slots: list[int], device: str) -> FlashMetadata:
    """Sequence i computes `query_lens[i]` new tokens at positions starts[i] .., with its blocks in `block_tables[i]`."""
    seq_lens = [s + n for s, n in zip(starts, query_lens, strict=True)]
    cu = [0]
    for n in query_lens:
        cu.append(cu[-1] + n)
    width = max((len(t) for t in block_tables), default=1)
    num_decodes = 0
    while num_decodes < len(query_lens) and query_lens[num_decodes] == 1:
        num_decodes += 1

    def tensor(values, dtype):
        return torch.tensor(values, dtype=dtype, device=device)

    return FlashMetadata(
        kv_cache=cache, slot_mapping=tensor(slots, torch.long), cu_seqlens_q=tensor(cu, torch.int32),
        seq_lens=tensor(seq_lens, torch.int32),
        block_table=tensor([t + [0] * (width - len(t)) for t in block_tables], torch.int32).view(len(block_tables), width),
        max_seqlen_q=max(query_lens, default=0), max_seqlen_k=max(seq_lens, default=0),
        cu_seqlens_q_cpu=cu, query_lens_cpu=list(query_lens), seq_lens_cpu=seq_lens, num_decodes=num_decodes)


def triton_available() -> bool:
    return importlib.util.find_spec("triton") is not None


def flash_attn_available() -> bool:
    return importlib.util.find_spec("flash_attn") is not None


def resolve_backend_name(name: str, device: str, block_size: int, dtype: torch.dtype) -> str:
    """The backend `name` stands for on this device (`auto` resolved), or a ValueError that says why not."""
    if name not in BACKENDS:
        raise ValueError(f"attention_backend must be one of {list(BACKENDS)}, got {name!r}")
    cuda = device.startswith("cuda")
    if name == "auto":
        flash_ok = block_size % FLASH_ATTN_BLOCK_MULTIPLE == 0 and dtype in (torch.float16, torch.bfloat16)
        if cuda and flash_attn_available() and flash_ok:
            return "flash-attn"
        return "triton" if cuda and triton_available() else "sdpa"
    if name == "triton":
        if not triton_available():
            raise ValueError("attention_backend='triton' needs the triton package: pip install -e '.[gpu]'")
        if not cuda and os.environ.get("TRITON_INTERPRET") != "1":
            raise ValueError("attention_backend='triton' runs on CUDA; on CPU only under TRITON_INTERPRET=1 (slow, for tests)")
    if name == "flash-attn":
        if not flash_attn_available():
            raise ValueError("attention_backend='flash-attn' needs the flash-attn package, which is not installed "
                             "(it builds only against CUDA); use 'auto' to take the best available backend")
        if not cuda:
            raise ValueError("attention_backend='flash-attn' runs on CUDA only")
        if block_size % FLASH_ATTN_BLOCK_MULTIPLE:
            raise ValueError(f"attention_backend='flash-attn' reads a paged cache in blocks of a multiple of "
                             f"{FLASH_ATTN_BLOCK_MULTIPLE} tokens, got block_size={block_size}")
        if dtype not in (torch.float16, torch.bfloat16):
            raise ValueError(f"attention_backend='flash-attn' computes in float16 or bfloat16, got {dtype}")
    return name


def choose_backend(name: str, device: str, block_size: int = 16, dtype: torch.dtype = torch.float32) -> AttentionBackend:
    """Build the backend `name` stands for; the choice is logged (and the engine keeps it as `engine.backend`)."""
    from m7_gptq.backends import BACKEND_CLASSES

    resolved = resolve_backend_name(name, device, block_size, dtype)
    backend = BACKEND_CLASSES[resolved]()
    log.info("attention backend: %s (asked for %r on %s)", backend.name, name, device)
    return backend
