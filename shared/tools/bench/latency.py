"""The latency run: single requests, one at a time, the engines interleaved request by request.
`run_latency` drives one serving function per engine: a milestone engine's, or transformers `generate`
with a logits processor that stamps every step."""

from __future__ import annotations

import time

import torch

from shared.sampling import SamplingParams
from shared.tools.bench.checks import check_engines
from shared.tools.bench.engines import _build_llm, _load_hf, _sync, serve
from shared.tools.bench.progress import Reporter
from shared.tools.bench.results import Result
from shared.tools.bench.workloads import Workload


def run_latency(engines: list[str], model: str, device: str, dtype: str, workload: Workload, repeat: int = 1,
                reporter: Reporter | None = None) -> list[Result]:
    """Requests one at a time, the engines interleaved request by request, so that machine noise and
    drift (thermal, other processes) fall on all of them alike. Each engine is built and warmed up once."""
    check_engines(engines)
    runners = [_latency_hf(model, device, dtype, workload) if e == "hf" else
               _latency_milestone(e, model, device, dtype, workload) for e in engines]
    prompts = workload.prompts(min(v for _, v, _ in runners))
    results = [Result(e) for e in engines]
    for one, _, _ in runners:
        one(prompts[0])  # warm-up: allocator, kernels, caches
    reporter = reporter or Reporter()
    width = max(len(e) for e in engines)
    with reporter:
        for rep in range(repeat):
            tasks, marks = [], []
            for (_, _, stats), res in zip(runners, results, strict=True):
                if stats is not None:
                    stats.reset()
                label = f"{res.engine:<{width}}" + (f" {rep + 1}/{repeat}" if repeat > 1 else "")
                tasks.append(reporter.start(label, len(prompts)))
                marks.append((res.output_tokens, res.wall_s))
            for prompt in prompts:
                for (one, _, _), res, task in zip(runners, results, tasks, strict=True):
                    ttft, tpot, e2e, n = one(prompt)
                    res.add(ttft, tpot, e2e, n)
                    res.wall_s += e2e
                    task.update(task.done + 1, task.tokens + n)
            for (_, _, stats), res, task, (tok0, wall0) in zip(runners, results, tasks, marks, strict=True):
                res.close_repetition(res.output_tokens - tok0, res.wall_s - wall0, len(prompts),
                                     **(stats.summary() if stats is not None else {}))
                task.finish(res.wall_s - wall0)
    return results


def _latency_milestone(name: str, model: str, device: str, dtype: str, workload: Workload):
    """A function that serves one prompt on a milestone engine (greedy, EOS ignored) -> (ttft, tpot, e2e, tokens)."""
    llm = _build_llm(name, model, device, dtype)
    params = SamplingParams(temperature=0, max_tokens=workload.output_len, ignore_eos=True)

    def one(ids: list[int]) -> tuple[float, float, float, int]:
        out = serve(llm, [(ids, params)])[0]
        _sync(device)
        m = out.metrics
        return m.ttft, m.tpot, m.e2e, m.num_output_tokens

    return one, llm.tokenizer.vocab_size, llm.engine.stats


def _latency_hf(model: str, device: str, dtype: str, workload: Workload):
    """The same service through transformers `generate`; a logits processor timestamps every step."""
    from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList

    hf = _load_hf(model, device, dtype)
    stamps: list[float] = []

    class Stamp(LogitsProcessor):
        def __call__(self, input_ids, scores):
            _sync(device)
            stamps.append(time.perf_counter())
            return scores

    gen = GenerationConfig(do_sample=False, max_new_tokens=workload.output_len, eos_token_id=[], pad_token_id=0)
    procs = LogitsProcessorList([Stamp()])

    def one(ids: list[int]) -> tuple[float, float, float, int]:
        x = torch.tensor([ids], device=device)
        stamps.clear()
        t0 = time.perf_counter()
        with torch.inference_mode():
            hf.generate(x, attention_mask=torch.ones_like(x), generation_config=gen, logits_processor=procs)
        _sync(device)
        t1 = time.perf_counter()
        # stamps[i]: logits for output token i are ready (ours stamps after sampling: a few µs apart)
        return stamps[0] - t0, (t1 - stamps[0]) / max(1, len(stamps) - 1), t1 - t0, len(stamps)

    return one, hf.config.vocab_size, None


# kept for notebooks and older callers
def milestone_runner(name: str, model: str, device: str, dtype: str, workload: Workload, **options):
    one, vocab, _ = _latency_milestone(name, model, device, dtype, workload)
    return one, vocab


def hf_runner(model: str, device: str, dtype: str, workload: Workload):
    one, vocab, _ = _latency_hf(model, device, dtype, workload)
    return one, vocab
