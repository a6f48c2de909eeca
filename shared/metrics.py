"""What an engine did, step by step: tokens computed, batch size, KV memory used vs reserved, preemptions.

Every engine from M2 on records one `StepRecord` per `step()` in `engine.stats`. The progress bar reads
the running totals (live prefill and decode tokens/s), the benchmark reads peak and mean KV figures,
and the notebooks plot the history.
"""

from __future__ import annotations

from collections import deque
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
    prefix_queried_tokens: int = 0  # (M6) tokens of the sequences admitted this step
    prefix_hit_tokens: int = 0  # (M6) of those, tokens found in the prefix cache (not computed)
    prefix_evictions: int = 0  # (M6) cached blocks reused for something else this step

    @property
    def kv_utilization(self) -> float:
        return self.kv_used_tokens / self.kv_reserved_tokens if self.kv_reserved_tokens else 0.0


HISTORY_STEPS = 10_000  # steps kept for plots; the totals and peaks below cover every step


@dataclass
class EngineStats:
    """Running totals and peaks over every step, plus the most recent `HISTORY_STEPS` StepRecords (a server that
    runs for days must not grow a list per step)."""

    kv_capacity_tokens: int = 0  # the KV memory budget, in token positions
    kv_num_blocks: int | None = None  # paged engines (M3+): blocks in the pool
    prefix_caching: bool = False  # (M6) the engine caches prefixes: summary() reports the prefix-cache figures
    history: deque[StepRecord] = field(default_factory=lambda: deque(maxlen=HISTORY_STEPS))
    steps: int = 0
    prefill_tokens: int = 0
    decode_tokens: int = 0
    prefill_seconds: float = 0.0  # wall time of steps that ran any prefill
    decode_seconds: float = 0.0  # wall time of decode-only steps
    preemptions: int = 0
    # over busy steps (something was running): for peaks and time-weighted means
    busy_steps: int = 0
    sum_running: int = 0
    sum_kv_used: int = 0
    sum_kv_reserved: int = 0
    max_running: int = 0
    peak_kv_used: int = 0
    peak_kv_reserved: int = 0
    peak_blocks_used: int = 0
    prefix_queried_tokens: int = 0
    prefix_hit_tokens: int = 0
    prefix_evictions: int = 0

    @property
    def prefix_hit_rate(self) -> float:
        """Tokens found in the prefix cache over tokens of the admitted sequences (vLLM's hit rate)."""
        return self.prefix_hit_tokens / self.prefix_queried_tokens if self.prefix_queried_tokens else 0.0

    def record(self, rec: StepRecord) -> None:
        self.steps += 1
        self.prefill_tokens += rec.num_prefill_tokens
        self.decode_tokens += rec.num_decode_tokens
        if rec.num_prefill_tokens:
            self.prefill_seconds += rec.duration
        else:
            self.decode_seconds += rec.duration
        self.preemptions += rec.num_preempted
        self.prefix_queried_tokens += rec.prefix_queried_tokens
        self.prefix_hit_tokens += rec.prefix_hit_tokens
        self.prefix_evictions += rec.prefix_evictions
        self.max_running = max(self.max_running, rec.num_running)
        if rec.kv_reserved_tokens:
            self.busy_steps += 1
            self.sum_running += rec.num_running
            self.sum_kv_used += rec.kv_used_tokens
            self.sum_kv_reserved += rec.kv_reserved_tokens
            self.peak_kv_used = max(self.peak_kv_used, rec.kv_used_tokens)
            self.peak_kv_reserved = max(self.peak_kv_reserved, rec.kv_reserved_tokens)
            self.peak_blocks_used = max(self.peak_blocks_used, rec.kv_blocks_used or 0)
        self.history.append(rec)

    def reset(self) -> None:
        """Forget every step so far (a benchmark calls this after its warm-up); the engine's sizes stay."""
        fresh = EngineStats(self.kv_capacity_tokens, self.kv_num_blocks, prefix_caching=self.prefix_caching)
        self.__dict__.update(fresh.__dict__)

    def rates(self) -> tuple[float, float]:
        """(prefill tokens/s over steps that prefilled, decode tokens/s over decode-only steps)."""
        return (self.prefill_tokens / self.prefill_seconds if self.prefill_seconds else 0.0,
                self.decode_tokens / self.decode_seconds if self.decode_seconds else 0.0)

    def summary(self) -> dict:
        """Peak and mean KV figures over every step (steps with nothing running are left out of the means)."""
        summary = {
            "steps": self.steps,
            "preemptions": self.preemptions,
            "max_running": self.max_running,
            "mean_running": self.sum_running / self.busy_steps if self.busy_steps else 0.0,
            "kv_capacity_tokens": self.kv_capacity_tokens,
            "kv_peak_reserved_tokens": self.peak_kv_reserved,
            "kv_peak_used_tokens": self.peak_kv_used,
            # utilisation weighted by time: sum(used) / sum(reserved) over the steps
            "kv_mean_utilization": self.sum_kv_used / self.sum_kv_reserved if self.sum_kv_reserved else 0.0,
            "kv_num_blocks": self.kv_num_blocks,
            "kv_peak_blocks_used": self.peak_blocks_used if self.kv_num_blocks else None,
        }
        if self.prefix_caching:
            summary.update(prefix_queried_tokens=self.prefix_queried_tokens, prefix_hit_tokens=self.prefix_hit_tokens,
                           prefix_hit_rate=self.prefix_hit_rate, prefix_evictions=self.prefix_evictions)
        return summary
