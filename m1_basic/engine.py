"""M1's engine: offline, one request at a time, contiguous KV cache.

`LLMEngine` has the interface every later engine keeps: `add_request`, `step`, `abort_request`,
`has_unfinished_requests`. Here a step advances the single running request by one token; requests wait
in a FIFO queue until the one before them has finished. M2 replaces this with a scheduler that runs many.
"""

from __future__ import annotations

from collections import deque

import torch

from m1_basic.kv_cache import ContiguousKVCache
from m1_basic.model_runner import ModelRunner
from shared.config import EngineConfig
from shared.inputs import Prompt, make_request
from shared.llm import LLMBase
from shared.loader import load_for_engine
from shared.outputs import RequestOutput
from shared.request import Request, SequenceStatus, claim_request_id
from shared.sampling import SamplingParams


class LLMEngine:
    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        self.device, self.dtype = config.device, config.dtype
        self.model, self.model_config, self.tokenizer, self.max_model_len = load_for_engine(config)
        self.runner = ModelRunner(self.model, self.model_config, config.torch_dtype, config.device)
        self.generator = torch.Generator(device=config.device).manual_seed(config.seed)
        self.waiting: deque[Request] = deque()
        self.current: Request | None = None
        self.cache: ContiguousKVCache | None = None
        self.requests: dict[str, Request] = {}  # unfinished requests by id
        self.stats = None  # m1 records no per-step figures; engines from M2 on do

    def add_request(self, prompt: Prompt, params: SamplingParams, request_id: str | None = None) -> str:
        rid = claim_request_id(request_id, self.requests)
        req = make_request(prompt, params, self.tokenizer, self.max_model_len, self.generator, rid)
        self.requests[rid] = req
        self.waiting.append(req)
        return rid

    def abort_request(self, request_id: str) -> None:
        """Stop a request, running or waiting; an unknown or already finished id is ignored."""
        req = self.requests.pop(request_id, None)
        if req is None:
            return
        req.abort()
        if req is self.current:
            self._release()
        else:
            self.waiting.remove(req)

    def has_unfinished_requests(self) -> bool:
        return self.current is not None or bool(self.waiting)

    def step(self) -> list[RequestOutput]:
        """Advance the running request by one token (prefill if it has just started)."""
        if self.current is None:
            if not self.waiting:
                return []
            self.current = self.waiting.popleft()
            seq = self.current.seqs[0]
            seq.set_status(SequenceStatus.RUNNING)
            # contiguous: reserve every position this request may ever use, up front
            need = min(len(self.current.prompt_token_ids) + self.current.params.max_tokens, self.max_model_len)
            self.cache = self.runner.allocate_cache(need)
            token, logprobs = self.runner.prefill(seq, self.cache)
        else:
            seq = self.current.seqs[0]
            token, logprobs = self.runner.decode(seq, self.cache)
        seq.append_token(token, self.model_config.eos_token_ids, self.max_model_len, logprobs)
        output = RequestOutput.from_request(self.current)
        if seq.is_finished:
            del self.requests[self.current.request_id]
            self._release()
        return [output]

    def _release(self) -> None:
        self.current, self.cache = None, None


class LLM(LLMBase):
    """`LLM(model="tiny-qwen3").generate(prompts, SamplingParams(...))` on the M1 engine."""

    engine_class = LLMEngine
