"""M2's KV cache: still contiguous per sequence, as pre-paging servers (Orca, FasterTransformer) kept it.

Every running sequence owns one slot: a contiguous buffer per K and V, `[layers, capacity, kv_heads,
head_dim]`. A slot cannot grow in place, so its capacity is reserved before the sequence runs.
The memory budget (`kv_cache_memory_bytes`) caps the total capacity of all slots. Two reservation
policies are available:

- `"max_model_len"` (the default, Orca's): every slot holds `max_model_len` positions. A running sequence
  never needs more memory, so nothing is ever preempted. But most of what is reserved is never
  written, because few sequences reach the full context. `utilization` measures how much.
- `"doubling"`: a slot starts at the next power of two above the sequence's length, and doubles (a new
  buffer plus a copy) when it is full, like a growable array. Less is wasted, but the scheduler admits
  sequences before it knows how long they will grow. When a slot must grow and the budget is spent, a
  running sequence has to be preempted.

M3 replaces slots with fixed-size blocks, which take the waste down to less than one block per sequence.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from shared.config import ModelConfig
from shared.request import Sequence

RESERVATIONS = ("max_model_len", "doubling")


@dataclass
class Slot:
    """One sequence's K/V: positions 0 .. length-1 hold real tokens, capacity positions are reserved."""

    k: torch.Tensor  # [layers, capacity, kv_heads, head_dim]
    v: torch.Tensor
    length: int = 0  # positions already written (the sequence's cached tokens)

    @property
    def capacity(self) -> int:
        return self.k.shape[1]

    def write(self, layer: int, start: int, k: torch.Tensor, v: torch.Tensor) -> None:
        """Store K/V of positions start .. start+T-1 (k, v: [T, kv_heads, head_dim])."""
        self.k[layer, start:start + k.shape[0]] = k
        self.v[layer, start:start + k.shape[0]] = v

    def read(self, layer: int, end: int) -> tuple[torch.Tensor, torch.Tensor]:
        """K/V of positions 0 .. end-1: views, no copy."""
        return self.k[layer, :end], self.v[layer, :end]


class ContiguousKVCache:
    """Hands out contiguous slots under a memory budget; the scheduler asks before it admits or continues."""

    def __init__(self, config: ModelConfig, max_model_len: int, memory_bytes: int, reservation: str,
                 dtype: torch.dtype, device: str) -> None:
        if reservation not in RESERVATIONS:
            raise ValueError(f"kv_reservation must be one of {list(RESERVATIONS)}, got {reservation!r}")
        self.config, self.max_model_len, self.reservation = config, max_model_len, reservation
        self.dtype, self.device = dtype, device
        self.bytes_per_token = config.kv_bytes_per_token(dtype)
        self.capacity_tokens = memory_bytes // self.bytes_per_token  # the budget, in token positions
        if self.capacity_tokens < max_model_len:
            raise ValueError(
                f"kv_cache_memory_bytes={memory_bytes:,} holds {self.capacity_tokens:,} token positions "
                f"({self.bytes_per_token:,} bytes each), fewer than one sequence of max_model_len={max_model_len}: "
                f"give at least {max_model_len * self.bytes_per_token:,} bytes or lower max_model_len"
            )
        self.slots: dict[int, Slot] = {}  # seq_id -> its slot
        self.reserved_tokens = 0

    # -- sizing ------------------------------------------------------------------------------------
    def capacity_for(self, num_tokens: int) -> int:
        """How many positions a slot reserves for a sequence of `num_tokens` tokens."""
        if self.reservation == "max_model_len":
            return self.max_model_len
        return min(self.max_model_len, 1 << max(0, num_tokens - 1).bit_length())  # next power of two >= n

    @property
    def used_tokens(self) -> int:
        return sum(s.length for s in self.slots.values())

    @property
    def num_free_tokens(self) -> int:
        return self.capacity_tokens - self.reserved_tokens

    # -- the scheduler's questions and the operations they guard -------------------------------------
    def can_allocate(self, seq: Sequence) -> bool:
        """Is there room for a slot holding all of `seq`'s tokens (its prompt, or everything when recomputing)?"""
        return self.capacity_for(seq.num_tokens) <= self.num_free_tokens

    def allocate(self, seq: Sequence) -> None:
        assert seq.seq_id not in self.slots, f"{seq} already has a slot"
        capacity = self.capacity_for(seq.num_tokens)
        self.slots[seq.seq_id] = self._new_slot(capacity)
        self.reserved_tokens += capacity

    def can_append(self, seq: Sequence) -> bool:
        """Can `seq` run one more token (position num_tokens - 1) without exceeding the budget?"""
        slot = self.slots[seq.seq_id]
        if seq.num_tokens <= slot.capacity:
            return True
        return self.capacity_for(seq.num_tokens) - slot.capacity <= self.num_free_tokens

    def append(self, seq: Sequence) -> None:
        """Make room for position num_tokens - 1, growing the slot (new buffer + copy) if it is full."""
        slot = self.slots[seq.seq_id]
        if seq.num_tokens <= slot.capacity:
            return
        bigger = self._new_slot(self.capacity_for(seq.num_tokens))
        bigger.k[:, :slot.length] = slot.k[:, :slot.length]
        bigger.v[:, :slot.length] = slot.v[:, :slot.length]
        bigger.length = slot.length
        self.reserved_tokens += bigger.capacity - slot.capacity
        self.slots[seq.seq_id] = bigger

    def free(self, seq: Sequence) -> None:
        """Give the slot back (finish, abort or preemption); a sequence without one is ignored."""
        slot = self.slots.pop(seq.seq_id, None)
        if slot is not None:
            self.reserved_tokens -= slot.capacity

    def slot(self, seq: Sequence) -> Slot:
        return self.slots[seq.seq_id]

    # -- the one owner of how many of a sequence's tokens are cached ------------------------------------
    def num_computed_tokens(self, seq: Sequence) -> int:
        """Positions of `seq` whose K/V are in its slot (0 for a sequence without one)."""
        slot = self.slots.get(seq.seq_id)
        return slot.length if slot is not None else 0

    def mark_computed(self, seq: Sequence, num_tokens: int) -> None:
        """After a step: `num_tokens` more positions of `seq` hold K/V."""
        self.slots[seq.seq_id].length += num_tokens

    def _new_slot(self, capacity: int) -> Slot:
        c = self.config
        shape = (c.num_hidden_layers, capacity, c.num_key_value_heads, c.head_dim)
        return Slot(torch.empty(shape, dtype=self.dtype, device=self.device),
                    torch.empty(shape, dtype=self.dtype, device=self.device))
