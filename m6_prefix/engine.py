"""M6's engine: m5's engine with automatic prefix caching, on by default (as in vLLM V1).

Attention, chunked prefill and copy-on-write are m5's. What changed: every full block of K/V is kept
findable by a chained hash of its prefix after its sequence is done (block_pool.py, prefix_hash.py), and a
new request starts after the longest prefix found there (kv_cache_manager.py, scheduler.py). Few-shot
prompts, multi-turn chats and a shared system prompt stop paying for their prefix.

Options beyond m5's: `enable_prefix_caching=False` turns caching off (m5's behaviour, for comparison), and
`scheduling_policy="lpm"` admits the waiting request with the longest cached prefix first (SGLang's
policy, within a fairness bound) instead of first come first served.

Every step records a `StepRecord`, now with the prefix cache's figures: tokens of the admitted sequences,
tokens of them found cached, and evictions. `engine.stats.prefix_hit_rate` is hits over queries.
"""

from __future__ import annotations

import time

import torch

from m6_prefix.attention import choose_backend
from m6_prefix.kv_cache import PagedKVCache
from m6_prefix.kv_cache_manager import KVCacheManager
from m6_prefix.model_runner import ModelRunner
from m6_prefix.scheduler import Scheduler
from shared.config import CacheConfig, EngineConfig, SchedulerConfig, default_kv_cache_memory_bytes
from shared.inputs import Prompt, make_request
from shared.llm import LLMBase
from shared.loader import load_for_engine
from shared.metrics import EngineStats, StepRecord
from shared.outputs import RequestOutput
from shared.request import Request, claim_request_id
from shared.sampling import SamplingParams

DEFAULT_MAX_NUM_BATCHED_TOKENS = 512  # tokens per step when chunked prefill is on
DEFAULT_LONG_PREFILL_TOKEN_THRESHOLD = 256  # one prompt's chunk at most; the rest of the budget admits others


class LLMEngine:
    def __init__(self, config: EngineConfig, max_num_seqs: int = 64, max_num_batched_tokens: int | None = None,
                 kv_cache_memory_bytes: int | None = None, block_size: int = 16, attention_backend: str = "auto",
                 enable_chunked_prefill: bool = True, long_prefill_token_threshold: int | None = None,
                 enable_prefix_caching: bool = True, scheduling_policy: str = "fcfs") -> None:
        self.cache_config = CacheConfig(block_size, kv_cache_memory_bytes, enable_prefix_caching)
        self.config = config
        self.device, self.dtype = config.device, config.dtype
        self.model, self.model_config, self.tokenizer, self.max_model_len = load_for_engine(config)
        if long_prefill_token_threshold is None:  # without chunking there is nothing to cap
            long_prefill_token_threshold = DEFAULT_LONG_PREFILL_TOKEN_THRESHOLD if enable_chunked_prefill is True else 0
        self.scheduler_config = SchedulerConfig(
            max_num_seqs, max_num_batched_tokens, enable_chunked_prefill, long_prefill_token_threshold, scheduling_policy,
        ).resolve(self.max_model_len, chunked_default=DEFAULT_MAX_NUM_BATCHED_TOKENS)
        if scheduling_policy == "lpm" and not enable_prefix_caching:
            raise ValueError("scheduling_policy='lpm' orders requests by their cached prefix, so it needs "
                             "enable_prefix_caching=True")
        self.backend = choose_backend(attention_backend, config.device, block_size, config.torch_dtype)
        per_token = self.model_config.kv_bytes_per_token(config.torch_dtype)
        one_sequence = -(-self.max_model_len // block_size) * block_size * per_token  # whole blocks
        memory = kv_cache_memory_bytes or default_kv_cache_memory_bytes(config.device, at_least=one_sequence)
        self.cache = PagedKVCache(self.model_config, memory, block_size, self.max_model_len, config.torch_dtype, config.device)
        self.kv = KVCacheManager(self.cache.num_blocks, block_size, enable_prefix_caching)
        self.scheduler = Scheduler(self.scheduler_config, self.kv)
        self.runner = ModelRunner(self.model, self.backend, config.device)
        self.generator = torch.Generator(device=config.device).manual_seed(config.seed)
        self.requests: dict[str, Request] = {}  # unfinished requests by id
        self.stats = EngineStats(kv_capacity_tokens=self.cache.capacity_tokens, kv_num_blocks=self.cache.num_blocks,
                                 prefix_caching=enable_prefix_caching)

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
        prefix = self.kv.take_stats()
        end = time.perf_counter()
        self.stats.record(StepRecord(
            time=end, duration=end - start, num_prefill_tokens=batch.num_prefill_tokens,
            num_decode_tokens=batch.num_decode_tokens, num_running=len(batch.seqs) + batch.num_forks,
            num_waiting=len(self.scheduler.waiting), num_preempted=len(batch.preempted),
            kv_used_tokens=kv_used, kv_reserved_tokens=kv_blocks * self.cache.block_size, kv_blocks_used=kv_blocks,
            prefix_queried_tokens=prefix.queried_tokens, prefix_hit_tokens=prefix.hit_tokens,
            prefix_evictions=prefix.evictions))
        return outputs

    def reset_prefix_cache(self) -> int:
        """Forget every cached prefix that no running sequence holds (new weights, or a cold-cache measurement).
        Returns the number of blocks dropped."""
        return self.kv.reset_prefix_cache()


class LLM(LLMBase):
    """`LLM(model="tiny-qwen3", enable_prefix_caching=True).generate(prompts, params)` on the M6 engine."""

    engine_class = LLMEngine
