"""The server's Prometheus metrics, under vLLM's names where vLLM has one (so its dashboards read ours).

Each server has its own `CollectorRegistry` (two apps in one process, as in the tests, do not collide). Every
metric carries vLLM's `model_name` label. What vLLM has no name for is under `folovllm:`.

Request states are seen from the client's side: *waiting* means admitted with no token yet (queued, or its
prompt being prefilled); *running* means producing tokens (a preempted request stays running until it finishes:
the engine recomputes it, the client just sees a longer gap between two tokens).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from shared.outputs import RequestOutput

if TYPE_CHECKING:
    from shared.serve.async_engine import AsyncEngine, RequestStream

# vLLM's buckets (seconds)
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
                40.0, 80.0, 160.0, 640.0, 2560.0)
ITL_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0)
E2E_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0, 480.0,
               960.0, 1920.0, 7680.0)


class ServerMetrics:
    """Updated by the engine loop (admissions, tokens, finishes, every step) and by the HTTP layer (refusals)."""

    def __init__(self, model_name: str) -> None:
        self.registry = CollectorRegistry()
        label = {"labelnames": ["model_name"], "registry": self.registry}

        def gauge(name, doc):
            return Gauge(name, doc, **label).labels(model_name)

        def counter(name, doc):
            return Counter(name, doc, **label).labels(model_name)

        def histogram(name, doc, buckets):
            return Histogram(name, doc, buckets=buckets, **label).labels(model_name)

        self.running = gauge("vllm:num_requests_running", "Requests producing tokens.")
        self.waiting = gauge("vllm:num_requests_waiting", "Requests admitted that have no token yet.")
        self.kv_usage = gauge("vllm:kv_cache_usage_perc", "KV-cache usage: 1 means every block (or token slot) is in use.")
        self.ttft = histogram("vllm:time_to_first_token_seconds", "Time from arrival to the first token.", TTFT_BUCKETS)
        self.itl = histogram("vllm:inter_token_latency_seconds", "Time between two steps that gave a request tokens.",
                             ITL_BUCKETS)
        self.e2e = histogram("vllm:e2e_request_latency_seconds", "Time from arrival to the last token.", E2E_BUCKETS)
        self.prompt_tokens = counter("vllm:prompt_tokens", "Prompt tokens of the requests admitted.")
        self.generation_tokens = counter("vllm:generation_tokens", "Tokens generated.")
        self.preemptions = counter("vllm:num_preemptions", "Sequences preempted (their KV cache dropped, recomputed later).")
        self.prefix_queries = counter("vllm:prefix_cache_queries", "Prompt tokens looked up in the prefix cache.")
        self.prefix_hits = counter("vllm:prefix_cache_hits", "Of those, tokens found in the prefix cache.")
        self._success = Counter("vllm:request_success", "Requests finished, by reason.",
                                labelnames=["model_name", "finished_reason"], registry=self.registry)
        self._success_name = model_name
        self._rejected = Counter("folovllm:requests_rejected", "Requests refused before they reached the engine.",
                                 labelnames=["model_name", "reason"], registry=self.registry)
        self.aborted = counter("folovllm:requests_aborted", "Requests aborted in flight (client gone, timeout, shutdown).")
        self._seen_preemptions = self._seen_queries = self._seen_hits = 0

    def render(self) -> bytes:
        return generate_latest(self.registry)

    # -- from the HTTP layer -------------------------------------------------------------------------------------
    def on_reject(self, reason: str) -> None:
        """reason: queue_full, unauthorized, bad_request, shutting_down, not_found."""
        self._rejected.labels(self._success_name, reason).inc()

    # -- from the engine loop ------------------------------------------------------------------------------------
    def on_admit(self, stream: RequestStream) -> None:
        self.prompt_tokens.inc(stream.num_prompt_tokens)

    def on_tokens(self, stream: RequestStream, now: float, new: int) -> None:
        self.generation_tokens.inc(new)
        if stream.first_token_at is None:
            self.ttft.observe(now - stream.submitted_at)
        else:
            self.itl.observe(now - stream.last_token_at)

    def on_finish(self, stream: RequestStream, out: RequestOutput, now: float) -> None:
        self.e2e.observe(now - stream.submitted_at)
        for reason in {o.finish_reason for o in out.outputs}:
            self._success.labels(self._success_name, reason or "unknown").inc()

    def on_abort(self) -> None:
        self.aborted.inc()

    def on_step(self, engine: AsyncEngine) -> None:
        self.running.set(engine.num_running)
        self.waiting.set(engine.num_waiting)
        stats = engine.engine.stats  # None for an engine that records no steps (m1)
        if stats is None:
            return
        if stats.history:
            last = stats.history[-1]
            if stats.kv_num_blocks:
                self.kv_usage.set((last.kv_blocks_used or 0) / stats.kv_num_blocks)
            elif stats.kv_capacity_tokens:
                self.kv_usage.set(last.kv_reserved_tokens / stats.kv_capacity_tokens)
        # the engine keeps running totals: add what is new since the last step (a reset restarts them)
        for attr, seen, counter in (("preemptions", "_seen_preemptions", self.preemptions),
                                    ("prefix_queried_tokens", "_seen_queries", self.prefix_queries),
                                    ("prefix_hit_tokens", "_seen_hits", self.prefix_hits)):
            total = getattr(stats, attr)
            counter.inc(max(0, total - getattr(self, seen)))
            setattr(self, seen, total)

    def start_from(self, stats) -> None:
        """Count from now on: an engine that ran before this server (offline, or under another app) keeps its
        running totals, which are not this server's preemptions or prefix-cache lookups."""
        if stats is not None:
            self._seen_preemptions, self._seen_queries, self._seen_hits = (
                stats.preemptions, stats.prefix_queried_tokens, stats.prefix_hit_tokens)

    def on_idle(self, engine: AsyncEngine) -> None:
        self.on_step(engine)
        self.kv_usage.set(0.0)
