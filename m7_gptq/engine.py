"""M7's engine: m6's engine, which also runs GPTQ 4-bit checkpoints.

Scheduling, prefix caching, chunked prefill and attention are m6's. What changed: when the model directory's
config.json has a `quantization_config` (quant_method "gptq"), every projection of the decoder layers is built
as a `GPTQLinear` through the shared model's `LinearFactory` seam and loaded from the checkpoint's packed
tensors (quant_linear.py, packing.py); after loading, each layer's kernel prepares its own layout once
(kernels.py). Embeddings, norms and the lm_head stay in the engine's dtype, as GPTQ checkpoints keep them.
A full-precision model runs exactly as on m6.

Option beyond m6's: `quant_kernel` ("auto", "torch", "cpu_int4", "triton") picks the dequant-matmul kernel;
the choice is logged and kept as `engine.quant_kernel` (None for a full-precision model). Making a GPTQ
checkpoint is an offline step: `python -m m7_gptq.quantize` (quantize.py).
"""

from __future__ import annotations

import time

import torch

from m7_gptq.attention import choose_backend
from m7_gptq.kv_cache import PagedKVCache
from m7_gptq.kv_cache_manager import KVCacheManager
from m7_gptq.model_runner import ModelRunner
from m7_gptq.quant_config import read_quant_config
from m7_gptq.quant_linear import gptq_linear_factory, prepare_quantized
from m7_gptq.scheduler import Scheduler
from shared.config import CacheConfig, EngineConfig, SchedulerConfig, default_kv_cache_memory_bytes
from shared.inputs import Prompt, make_request
from shared.llm import LLMBase
from shared.loader import load_for_engine, resolve_model
from shared.metrics import EngineStats, StepRecord
from shared.model.layers import make_linear
from shared.outputs import RequestOutput
from shared.request import Request, claim_request_id
from shared.sampling import SamplingParams

DEFAULT_MAX_NUM_BATCHED_TOKENS = 512  # tokens per step when chunked prefill is on
DEFAULT_LONG_PREFILL_TOKEN_THRESHOLD = 256  # one prompt's chunk at most; the rest of the budget admits others


class LLMEngine:
    def __init__(self, config: EngineConfig, max_num_seqs: int = 64, max_num_batched_tokens: int | None = None,
                 kv_cache_memory_bytes: int | None = None, block_size: int = 16, attention_backend: str = "auto",
                 enable_chunked_prefill: bool = True, long_prefill_token_threshold: int | None = None,
                 enable_prefix_caching: bool = True, scheduling_policy: str = "fcfs",
                 quant_kernel: str = "auto") -> None:
        self.cache_config = CacheConfig(block_size, kv_cache_memory_bytes, enable_prefix_caching)
        self.config = config
        self.device, self.dtype = config.device, config.dtype
        self.quant_config = read_quant_config(resolve_model(config.model))  # None: a full-precision model
        if self.quant_config is None and quant_kernel != "auto":
            raise ValueError(f"quant_kernel={quant_kernel!r} runs GPTQ checkpoints, and {config.model!r} is not "
                             "quantized (its config.json has no quantization_config)")
        factory = make_linear if self.quant_config is None else gptq_linear_factory(
            self.quant_config, quant_kernel, config.device)
        self.model, self.model_config, self.tokenizer, self.max_model_len = load_for_engine(config, factory)
        self.quant_kernel = None if self.quant_config is None else prepare_quantized(self.model, quant_kernel, config.device)
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
    """`LLM(model="/path/to/gptq-checkpoint").generate(prompts, params)` on the M7 engine (any model m6 runs, too)."""

    engine_class = LLMEngine
