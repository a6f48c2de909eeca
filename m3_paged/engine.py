"""M3's engine: m2's continuous batching on a paged KV cache.

The interface is m2's (`add_request`, `step`, `abort_request`, `has_unfinished_requests`) and the
scheduling is m2's. What changed is memory. At start-up the whole KV budget is cut into blocks
(`kv_cache.py`), and sequences take blocks one at a time through their block tables
(`kv_cache_manager.py`). With no slot reserved for the longest possible output, the same memory holds
several times as many sequences. And `SamplingParams(n=...)` runs the prompt once for n completions,
which share its blocks until they write (copy-on-write).

Every step records a `StepRecord`: tokens, batch size, and the KV figures, namely positions that hold
a token against positions in blocks in use (utilisation), and blocks in use.
"""

from __future__ import annotations

import time

import torch

from m3_paged.attention import choose_backend
from m3_paged.kv_cache import PagedKVCache
from m3_paged.kv_cache_manager import KVCacheManager
from m3_paged.model_runner import ModelRunner
from m3_paged.scheduler import Scheduler
from shared.config import CacheConfig, EngineConfig, SchedulerConfig, default_kv_cache_memory_bytes
from shared.inputs import Prompt, make_request
from shared.llm import LLMBase
from shared.loader import load_for_engine
from shared.metrics import EngineStats, StepRecord
from shared.outputs import RequestOutput
from shared.request import Request, claim_request_id
from shared.sampling import SamplingParams


class LLMEngine:
    def __init__(self, config: EngineConfig, max_num_seqs: int = 64, max_num_batched_tokens: int | None = None,
                 kv_cache_memory_bytes: int | None = None, block_size: int = 16, attention_backend: str = "auto") -> None:
        self.cache_config = CacheConfig(block_size, kv_cache_memory_bytes)
        self.config = config
        self.device, self.dtype = config.device, config.dtype
        self.model, self.model_config, self.tokenizer, self.max_model_len = load_for_engine(config)
        self.scheduler_config = SchedulerConfig(max_num_seqs, max_num_batched_tokens).resolve(self.max_model_len)
        self.backend = choose_backend(attention_backend, config.device)
        per_token = self.model_config.kv_bytes_per_token(config.torch_dtype)
        one_sequence = -(-self.max_model_len // block_size) * block_size * per_token  # whole blocks
        memory = kv_cache_memory_bytes or default_kv_cache_memory_bytes(config.device, at_least=one_sequence)
        self.cache = PagedKVCache(self.model_config, memory, block_size, self.max_model_len, config.torch_dtype, config.device)
        self.kv = KVCacheManager(self.cache.num_blocks, block_size)
        self.scheduler = Scheduler(self.scheduler_config, self.kv)
        self.runner = ModelRunner(self.model, self.backend, config.device)
        self.generator = torch.Generator(device=config.device).manual_seed(config.seed)
        self.requests: dict[str, Request] = {}  # unfinished requests by id
        self.stats = EngineStats(kv_capacity_tokens=self.cache.capacity_tokens, kv_num_blocks=self.cache.num_blocks)

    def add_request(self, prompt: Prompt, params: SamplingParams, request_id: str | None = None) -> str:
        rid = claim_request_id(request_id, self.requests)
        req = make_request(prompt, params, self.tokenizer, self.max_model_len, self.generator, rid,
                           max_n=self.scheduler_config.max_num_seqs)
        self.requests[req.request_id] = req
        self.scheduler.add(req.seqs[0])  # with n > 1 the siblings join by forking when the prompt has run
        return req.request_id

    def abort_request(self, request_id: str) -> None:
        """Stop a request wherever it is (waiting, running or preempted) and free its blocks at once.
        An unknown or already finished id is ignored."""
        req = self.requests.pop(request_id, None)
        if req is None:
            return
        for seq in req.seqs:
            self.scheduler.finish(seq)
        req.abort()

    def has_unfinished_requests(self) -> bool:
        return self.scheduler.has_unfinished()

    def step(self) -> list[RequestOutput]:
        """Run one batched forward pass: schedule, execute, sample, update. Returns the requests that advanced."""
        start = time.perf_counter()
        batch = self.scheduler.schedule()
        if not batch.seqs:
            return []
        sampled = self.runner.execute(batch, self.kv, self.cache)
        self.scheduler.update_after_step(batch)  # cached counts advance; n > 1 siblings fork
        kv_used, kv_blocks = self.kv.used_tokens, self.kv.num_used_blocks  # while the batch holds its blocks
        touched: dict[str, Request] = {}
        for seq, token, logprobs in sampled:
            seq.append_token(token, self.model_config.eos_token_ids, self.max_model_len, logprobs)
            if seq.is_finished:
                self.scheduler.finish(seq)
            touched[seq.request.request_id] = seq.request
        outputs = []
        for rid, req in touched.items():
            outputs.append(RequestOutput.from_request(req))
            if req.is_finished:
                del self.requests[rid]
        end = time.perf_counter()
        self.stats.record(StepRecord(
            time=end, duration=end - start, num_prefill_tokens=batch.num_prefill_tokens,
            num_decode_tokens=batch.num_decode_tokens, num_running=len(sampled),
            num_waiting=len(self.scheduler.waiting), num_preempted=len(batch.preempted),
            kv_used_tokens=kv_used, kv_reserved_tokens=kv_blocks * self.cache.block_size, kv_blocks_used=kv_blocks))
        return outputs


class LLM(LLMBase):
    """`LLM(model="tiny-qwen3", block_size=16, max_num_seqs=64).generate(prompts, SamplingParams(n=...))` on the M3 engine."""

    engine_class = LLMEngine
