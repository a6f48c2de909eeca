"""What an engine did, step by step: tokens computed, batch size, KV memory used vs reserved, preemptions.

Every engine from M2 on records one `StepRecord` per `step()` in `engine.stats`. The progress bar reads
the running totals (live prefill and decode tokens/s), the benchmark reads peak and mean KV figures,
and the notebooks plot the history.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class StepRecord:
    time: float  # perf_counter() when the step ended
    duration: float  # seconds the step took
    num_prefill_tokens: int  # prompt (or recomputed) tokens run this step
    num_decode_tokens: int  # one per sequence that was decoding
    num_running: int  # sequences in the batch
    num_waiting: int  # sequences queued after the step
    num_preempted: int  # sequences preempted by this step's scheduling
    kv_used_tokens: int  # positions that hold a real token's K/V
    kv_reserved_tokens: int  # positions set aside for running sequences
    kv_blocks_used: int | None = None  # physical blocks in use (paged engines, M3+)

    @property
    def kv_utilization(self) -> float:
        return self.kv_used_tokens / self.kv_reserved_tokens if self.kv_reserved_tokens else 0.0


@dataclass
class EngineStats:
    kv_capacity_tokens: int = 0  # the KV memory budget, in token positions
    kv_num_blocks: int | None = None  # paged engines (M3+): blocks in the pool
    history: list[StepRecord] = field(default_factory=list)
    prefill_tokens: int = 0
    decode_tokens: int = 0
    prefill_seconds: float = 0.0  # wall time of steps that ran any prefill
    decode_seconds: float = 0.0  # wall time of decode-only steps
    preemptions: int = 0

    def record(self, rec: StepRecord) -> None:
        self.prefill_tokens += rec.num_prefill_tokens
        self.decode_tokens += rec.num_decode_tokens
        if rec.num_prefill_tokens:
            self.prefill_seconds += rec.duration
        else:
            self.decode_seconds += rec.duration
        self.preemptions += rec.num_preempted
        self.history.append(rec)

    def rates(self) -> tuple[float, float]:
        """(prefill tokens/s over steps that prefilled, decode tokens/s over decode-only steps)."""
        return (self.prefill_tokens / self.prefill_seconds if self.prefill_seconds else 0.0,
                self.decode_tokens / self.decode_seconds if self.decode_seconds else 0.0)

    def summary(self) -> dict:
        """Peak and mean KV figures over the recorded steps (steps with nothing running are left out)."""
        busy = [r for r in self.history if r.kv_reserved_tokens]
        return {
            "steps": len(self.history),
            "preemptions": self.preemptions,
            "max_running": max((r.num_running for r in self.history), default=0),
            "mean_running": sum(r.num_running for r in busy) / len(busy) if busy else 0.0,
            "kv_capacity_tokens": self.kv_capacity_tokens,
            "kv_peak_reserved_tokens": max((r.kv_reserved_tokens for r in busy), default=0),
            "kv_peak_used_tokens": max((r.kv_used_tokens for r in busy), default=0),
            # utilisation weighted by time: sum(used) / sum(reserved) over the steps
            "kv_mean_utilization": (sum(r.kv_used_tokens for r in busy) / sum(r.kv_reserved_tokens for r in busy)
                                    if busy else 0.0),
            "kv_num_blocks": self.kv_num_blocks,
            "kv_peak_blocks_used": max((r.kv_blocks_used or 0 for r in busy), default=0) if self.kv_num_blocks else None,
        }

