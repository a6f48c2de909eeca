"""The throughput run: every request at once. `MilestoneRunner` (continuous batching, the engine's own
scheduler) and `HFRunner` (transformers static batching) each serve the workload once per repetition;
`run_throughput` builds and warms them up once, then runs them interleaved A B A B ..."""

from __future__ import annotations

import time

import torch

from shared.config import DTYPES
from shared.sampling import SamplingParams
from shared.tools.bench.checks import check_engines
from shared.tools.bench.engines import _build_llm, _load_hf, _sync, cold_start, serve
from shared.tools.bench.progress import Reporter, Task
from shared.tools.bench.results import Result, add_ratios
from shared.tools.bench.workloads import ThroughputWorkload


class MilestoneRunner:
    """One milestone engine, built once, serving a throughput workload once per repetition."""

    def __init__(self, name: str, model: str, device: str, dtype: str, max_model_len: int | None, options: dict):
        self.name, self.device = name, device
        self.llm = _build_llm(name, model, device, dtype, max_model_len, **options)
        self.result = Result(name)

    def warm_up(self, requests) -> None:
        greedy = [(ids, SamplingParams(temperature=0, max_tokens=min(o, 8), ignore_eos=True)) for ids, o in requests[:2]]
        serve(self.llm, greedy)

    def run(self, requests, task: Task | None) -> None:
        engine = self.llm.engine
        cold_start(engine)  # M6: no prompt of the warm-up or of the previous round is cached
        stats = engine.stats
        if stats is not None:
            stats.reset()  # only this repetition's steps
        greedy = [(ids, SamplingParams(temperature=0, max_tokens=o, ignore_eos=True)) for ids, o in requests]
        _sync(self.device)
        t0 = time.perf_counter()
        outs = serve(self.llm, greedy, task)
        _sync(self.device)
        wall = time.perf_counter() - t0
        tokens = sum(o.metrics.num_output_tokens for o in outs)
        for o in outs:
            m = o.metrics
            self.result.add(m.ttft, m.tpot, m.e2e, m.num_output_tokens)
        self.result.wall_s += wall
        # the Engine interface (shared/engine_api.py) gives the model and the dtype, not the cache
        extra = {}
        if stats is not None:
            extra = dict(stats.summary(), kv_bytes_per_token=engine.model_config.kv_bytes_per_token(DTYPES[engine.dtype]))
        self.result.close_repetition(tokens, wall, len(outs), **extra)
        if task is not None:
            task.finish(wall)


class HFRunner:
    """Static batching, as `transformers.generate` offers it: batches of `batch_size` in arrival order,
    left-padded; each batch runs until its longest output is done. Only the tokens each request asked for
    are counted, so the work spent on finished rows and padding shows up as lost throughput. A logits
    processor stamps every step: TTFT = first logits of the request's batch; TPOT runs from there to the
    step that produced the request's own last token; e2e is the end of its batch (when `generate` returns)."""

    def __init__(self, model: str, device: str, dtype: str, batch_size: int):
        from transformers import LogitsProcessor, LogitsProcessorList

        self.name, self.device, self.batch_size = "hf", device, batch_size
        self.hf = _load_hf(model, device, dtype)
        self.result = Result("hf")
        self.stamps: list[float] = []
        stamps = self.stamps

        class Stamp(LogitsProcessor):
            def __call__(self, input_ids, scores):
                _sync(device)
                stamps.append(time.perf_counter())
                return scores

        self.procs = LogitsProcessorList([Stamp()])

    def _batch(self, batch) -> None:
        from transformers import GenerationConfig

        width = max(len(ids) for ids, _ in batch)
        x = torch.tensor([[0] * (width - len(ids)) + ids for ids, _ in batch], device=self.device)
        mask = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids, _ in batch], device=self.device)
        gen = GenerationConfig(do_sample=False, max_new_tokens=max(o for _, o in batch), eos_token_id=[], pad_token_id=0)
        self.stamps.clear()
        with torch.inference_mode():
            self.hf.generate(x, attention_mask=mask, generation_config=gen, logits_processor=self.procs)
        _sync(self.device)

    def warm_up(self, requests) -> None:
        self._batch([(ids, min(o, 8)) for ids, o in requests[:2]])

    def run(self, requests, task: Task | None) -> None:
        _sync(self.device)
        t0 = time.perf_counter()
        done = tokens = 0
        for i in range(0, len(requests), self.batch_size):
            batch = requests[i:i + self.batch_size]
            self._batch(batch)
            end = time.perf_counter()
            for _, o in batch:
                last = self.stamps[min(o, len(self.stamps)) - 1]
                self.result.add(self.stamps[0] - t0, (last - self.stamps[0]) / max(1, o - 1), end - t0, o)
            done, tokens = done + len(batch), tokens + sum(o for _, o in batch)
            if task is not None:
                task.update(done, tokens)
        wall = time.perf_counter() - t0
        self.result.wall_s += wall
        self.result.close_repetition(tokens, wall, len(requests), batch_size=self.batch_size)
        if task is not None:
            task.finish(wall)


def _split_cuda_budget(engines: list[str], device: str, options: dict) -> None:
    """On CUDA every engine is alive at once (they run interleaved): without a KV budget the first would take
    80% of free memory. Give each milestone engine (and HF's batch) an equal share instead."""
    if not device.startswith("cuda") or options.get("kv_cache_memory_bytes"):
        return
    free, _ = torch.cuda.mem_get_info(torch.device(device))
    options["kv_cache_memory_bytes"] = int(0.8 * free / max(1, len(engines)))


def run_throughput(engines: list[str], model: str, device: str, dtype: str, workload: ThroughputWorkload,
                   max_model_len: int | None = None, repeat: int = 1, reporter: Reporter | None = None,
                   engine_models: dict[str, str] | None = None, **options) -> list[dict]:
    """Every engine serves the whole workload; each is built and warmed up once, then the engines run
    interleaved `repeat` times (A B A B ...), so that machine noise falls on all of them alike.
    `engine_models` runs some engines on another model (m7_gptq on a GPTQ checkpoint of `model`).
    Returns one summary per engine (`output_tok_per_s` is the median over the repetitions)."""
    from shared.loader import resolve_model
    from shared.tokenizer import Tokenizer

    check_engines(engines)
    requests = workload.requests(Tokenizer(resolve_model(model)).vocab_size)
    _split_cuda_budget(engines, device, options)
    runners = [HFRunner(model, device, dtype, options.get("max_num_seqs") or 64) if e == "hf" else
               MilestoneRunner(e, (engine_models or {}).get(e, model), device, dtype, max_model_len, options) for e in engines]
    for r in runners:
        r.warm_up(requests)
    reporter = reporter or Reporter()
    width = max(len(e) for e in engines)
    with reporter:
        for rep in range(repeat):
            for r in runners:
                label = f"{r.name:<{width}}" + (f" {rep + 1}/{repeat}" if repeat > 1 else "")
                r.run(requests, reporter.start(label, len(requests)))
    return add_ratios([r.result.summary() for r in runners])
