"""M2's engine: continuous batching. Many requests run at once; each step is one batched forward pass.

The interface is m1's (`add_request`, `step`, `abort_request`, `has_unfinished_requests`), and now it
works online: requests may be added or aborted between any two steps while others are running. A step
asks the scheduler for a plan, runs it as one forward pass, appends one sampled token to every
sequence in the batch, and releases the sequences that finished. It also records a `StepRecord`
(tokens, batch size, KV memory used vs reserved) in `engine.stats`.
"""

from __future__ import annotations

import time

import torch

from m2_batching.kv_cache import ContiguousKVCache
from m2_batching.model_runner import ModelRunner
from m2_batching.scheduler import Scheduler
from shared.config import EngineConfig, SchedulerConfig, default_kv_cache_memory_bytes
from shared.inputs import Prompt, make_request
from shared.llm import LLMBase
from shared.loader import load_for_engine
from shared.metrics import EngineStats, StepRecord
from shared.outputs import RequestOutput
from shared.request import Request, claim_request_id
from shared.sampling import SamplingParams


class LLMEngine:
    def __init__(self, config: EngineConfig, max_num_seqs: int = 64, max_num_batched_tokens: int | None = None,
                 kv_cache_memory_bytes: int | None = None, kv_reservation: str = "max_model_len") -> None:
        if kv_cache_memory_bytes is not None and (not isinstance(kv_cache_memory_bytes, int) or kv_cache_memory_bytes < 1):
            raise ValueError(f"kv_cache_memory_bytes must be a positive integer, got {kv_cache_memory_bytes!r}")
        self.config = config
        self.device, self.dtype = config.device, config.dtype
        self.model, self.model_config, self.tokenizer, self.max_model_len = load_for_engine(config)
        self.scheduler_config = SchedulerConfig(max_num_seqs, max_num_batched_tokens).resolve(self.max_model_len)
        one_sequence = self.max_model_len * self.model_config.kv_bytes_per_token(config.torch_dtype)
        memory = kv_cache_memory_bytes or default_kv_cache_memory_bytes(config.device, at_least=one_sequence)
        self.cache = ContiguousKVCache(self.model_config, self.max_model_len, memory, kv_reservation,
                                       config.torch_dtype, config.device)
        self.scheduler = Scheduler(self.scheduler_config, self.cache)
        self.runner = ModelRunner(self.model, config.device)
        self.generator = torch.Generator(device=config.device).manual_seed(config.seed)
        self.requests: dict[str, Request] = {}  # unfinished requests by id
        self.stats = EngineStats(kv_capacity_tokens=self.cache.capacity_tokens)

    def add_request(self, prompt: Prompt, params: SamplingParams, request_id: str | None = None) -> str:
        rid = claim_request_id(request_id, self.requests)
        req = make_request(prompt, params, self.tokenizer, self.max_model_len, self.generator, rid,
                           max_n=self.scheduler_config.max_num_seqs)  # n > 1: each completion gets its own slot
        self.requests[req.request_id] = req
        for seq in req.seqs:
            self.scheduler.add(seq)
        return req.request_id

    def abort_request(self, request_id: str) -> None:
        """Stop a request wherever it is (waiting, running or preempted) and free its KV slot at once.
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
        sampled = self.runner.execute(batch, self.cache)
        self.scheduler.update_after_step(batch)
        kv_used, kv_reserved = self.cache.used_tokens, self.cache.reserved_tokens  # while the batch holds them
        touched: dict[str, Request] = {}
        for seq, (token, logprobs) in zip(batch.seqs, sampled, strict=True):
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
            num_decode_tokens=batch.num_decode_tokens, num_running=len(batch.seqs),
            num_waiting=len(self.scheduler.waiting), num_preempted=len(batch.preempted),
            kv_used_tokens=kv_used, kv_reserved_tokens=kv_reserved))
        return outputs


class LLM(LLMBase):
    """`LLM(model="tiny-qwen3", max_num_seqs=64).generate(prompts, SamplingParams(...))` on the M2 engine."""

    engine_class = LLMEngine
