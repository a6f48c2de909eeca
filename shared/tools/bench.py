"""Benchmark harness shared by every milestone: named workloads, metrics, a JSON result and a rich table.

    python -m shared.tools.bench latency                      # the newest milestone against HF generate
    python -m shared.tools.bench throughput --num-requests 64 --prompt-len 32:256 --output-len 32:256 \
        --repeat 3 --out run.json                             # the last two milestones, 3 interleaved runs
    python -m shared.tools.bench compare bench_results/run.json

Engines are milestone package names (`shared/tools/milestones.py` ENGINES) or `hf` (transformers
`generate`). Every engine in one invocation runs the same requests on the same machine, and the table
reports each one's ratio to the first engine: comparisons are ratios measured in one run. With
`--repeat N` each engine is built and warmed up once, then the engines run interleaved A B A B ... N
times; the table gives the median and the min–max spread, and the JSON keeps every repetition.
`compare` prints each engine of a saved run against the one before it (m2 vs m1, m3 vs m2, ...).
`--model random:qwen3-0.6b` builds a random-weight checkpoint of that preset shape (shared/config.py
PRESETS) for GPU runs. `--threads N` sets torch's CPU threads (default: half the cores, see
docs/benchmarks.md "Threads"). A mistake in the arguments is one red line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import itertools
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import NoReturn

import torch
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from shared.config import default_num_threads
from shared.llm import engine_options
from shared.sampling import SamplingParams
from shared.tools.milestones import ENGINES

ENGINE_NAMES = [*ENGINES, "hf"]  # what --engines accepts
RESULTS_DIR = Path("bench_results")  # where a bare --out NAME.json goes (ignored by git)
UP, DOWN = "↑", "↓"  # higher is better, lower is better


def default_threads() -> int:
    """Torch CPU threads for a benchmark: the engines' default (shared.config.default_num_threads)."""
    return default_num_threads()


class BenchError(ValueError):
    """A mistake in what the user asked for: reported as one line, exit status 2, no traceback."""


def fail(message: str) -> NoReturn:
    Console(stderr=True, soft_wrap=True).print(f"[red]error: {escape(message)}[/red]", highlight=False)
    raise SystemExit(2)


# ---------------------------------------------------------------------------------------------- workloads


@dataclass
class Workload:
    name: str
    num_requests: int
    prompt_len: int
    output_len: int
    seed: int = 0

    def __post_init__(self) -> None:
        if self.num_requests < 1 or self.prompt_len < 1:
            raise BenchError(f"num_requests and prompt_len must be >= 1, got {self.num_requests}, {self.prompt_len}")
        if self.output_len < 2:
            raise BenchError(f"output_len must be >= 2 so that TPOT is defined, got {self.output_len}")

    def prompts(self, vocab_size: int) -> list[list[int]]:
        """Random token ids (as nano-vllm's benchmark), avoiding the first 16 ids where special tokens live."""
        g = torch.Generator().manual_seed(self.seed)
        return [torch.randint(16, vocab_size, (self.prompt_len,), generator=g).tolist() for _ in range(self.num_requests)]


@dataclass
class ThroughputWorkload:
    """nano-vllm's throughput test, scaled by its arguments: `num_requests` sequences submitted at once,
    prompt and output lengths drawn uniformly from [lo, hi], random token ids, EOS ignored.
    Throughput = output tokens / wall time of the whole batch."""

    num_requests: int
    prompt_len: tuple[int, int]
    output_len: tuple[int, int]
    seed: int = 0
    name: str = "throughput"

    def __post_init__(self) -> None:
        for what, (lo, hi) in (("prompt_len", self.prompt_len), ("output_len", self.output_len)):
            if not 1 <= lo <= hi:
                raise BenchError(f"{what} range must satisfy 1 <= lo <= hi, got {lo}:{hi}")
        if self.output_len[0] < 2:
            raise BenchError(f"output lengths must be >= 2 so that TPOT is defined, got {self.output_len[0]}")
        if self.num_requests < 1:
            raise BenchError(f"num_requests must be >= 1, got {self.num_requests}")

    def requests(self, vocab_size: int) -> list[tuple[list[int], int]]:
        """(prompt token ids, output length) per request, the same for every engine."""
        g = torch.Generator().manual_seed(self.seed)

        def draw(lo: int, hi: int) -> int:
            return int(torch.randint(lo, hi + 1, (1,), generator=g))

        out = []
        for _ in range(self.num_requests):
            p, o = draw(*self.prompt_len), draw(*self.output_len)
            out.append((torch.randint(16, vocab_size, (p,), generator=g).tolist(), o))
        return out


# ----------------------------------------------------------------------------------------------- results


def _pct(xs: list[float], q: int) -> float:
    return statistics.quantiles(xs, n=100, method="inclusive")[q - 1] if len(xs) > 1 else xs[0]


@dataclass
class Result:
    """One engine's requests: per-request times pooled over every repetition, and one summary per repetition."""

    engine: str
    ttft_s: list[float] = field(default_factory=list)
    tpot_s: list[float] = field(default_factory=list)
    e2e_s: list[float] = field(default_factory=list)
    output_tokens: int = 0
    wall_s: float = 0.0
    repetitions: list[dict] = field(default_factory=list)  # per repetition: tokens, wall, tok/s, engine stats

    def add(self, ttft: float | None, tpot: float | None, e2e: float, tokens: int) -> None:
        if ttft is not None:
            self.ttft_s.append(ttft)
        if tpot is not None:
            self.tpot_s.append(tpot)
        self.e2e_s.append(e2e)
        self.output_tokens += tokens

    def close_repetition(self, tokens: int, wall: float, requests: int, **extra) -> None:
        """Record one repetition's totals (call after its requests were `add`ed and `wall_s` grew by `wall`)."""
        self.repetitions.append({"output_tokens": tokens, "wall_s": wall, "output_tok_per_s": tokens / wall,
                                 "requests_per_s": requests / wall, **extra})

    def summary(self) -> dict:
        reps = self.repetitions or [{"output_tok_per_s": self.output_tokens / self.wall_s, "wall_s": self.wall_s,
                                     "requests_per_s": len(self.e2e_s) / self.wall_s, "output_tokens": self.output_tokens}]
        tps = [r["output_tok_per_s"] for r in reps]
        s: dict = {"engine": self.engine}
        for name, xs, scale in (("ttft_ms", self.ttft_s, 1e3), ("tpot_ms", self.tpot_s, 1e3)):
            for q in (50, 95, 99):
                s[f"{name}_p{q}"] = scale * _pct(xs, q) if xs else None
        s.update({
            "e2e_s_p50": _pct(self.e2e_s, 50), "e2e_s_p99": _pct(self.e2e_s, 99),
            "output_tok_per_s": statistics.median(tps), "output_tok_per_s_min": min(tps), "output_tok_per_s_max": max(tps),
            "requests_per_s": statistics.median(r["requests_per_s"] for r in reps),
            "wall_s": statistics.median(r["wall_s"] for r in reps),
            "output_tokens": reps[0]["output_tokens"], "num_repetitions": len(reps),
        })
        # engine figures (KV, batch sizes, preemptions): the scheduler is deterministic, so the last repetition's
        totals = ("output_tokens", "wall_s", "output_tok_per_s", "requests_per_s")
        s.update({k: v for k, v in reps[-1].items() if k not in totals})
        s["repetitions"] = reps
        return s


def add_ratios(summaries: list[dict]) -> list[dict]:
    """Each engine's output tok/s over the first engine's, repetition by repetition (both ran in the same
    round, back to back): `ratios` lists them, `ratio`/`ratio_min`/`ratio_max` are their median and spread."""
    if not summaries:
        return summaries
    base = [r["output_tok_per_s"] for r in summaries[0].get("repetitions", [summaries[0]])]
    for s in summaries:
        mine = [r["output_tok_per_s"] for r in s.get("repetitions", [s])]
        ratios = [a / b for a, b in zip(mine, base, strict=False)]
        s.update(ratio_to=summaries[0]["engine"], ratios=ratios, ratio=statistics.median(ratios),
                 ratio_min=min(ratios), ratio_max=max(ratios))
    return summaries


# --------------------------------------------------------------------------------------------- progress


def _live(console: Console) -> bool:
    return console.is_terminal and not console.is_jupyter and not console.is_dumb_terminal


class Reporter:
    """A rich progress bar per engine run (requests done/total, live output tok/s) on a terminal; one line
    per engine run on stderr otherwise (a log file, CI, a notebook)."""

    def __init__(self, console: Console | None = None, quiet: bool = False) -> None:
        self.console = console or Console()
        self.live = _live(self.console) and not quiet
        self.quiet = quiet
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(bar_width=24), MofNCompleteColumn(),
                                 TextColumn("{task.fields[rate]}"), TimeElapsedColumn(),
                                 console=self.console, disable=not self.live, transient=False)

    def __enter__(self) -> Reporter:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.progress.__exit__(*exc)

    def start(self, label: str, total: int) -> Task:
        return Task(self, label, total)


class Task:
    def __init__(self, reporter: Reporter, label: str, total: int) -> None:
        self.reporter, self.label, self.total = reporter, label, total
        self.id = reporter.progress.add_task(label, total=total, rate="") if reporter.live else None
        self.t0 = time.perf_counter()
        self.done = self.tokens = 0

    def update(self, done: int, tokens: int) -> None:
        self.done, self.tokens = done, tokens
        if self.id is not None:
            rate = tokens / max(time.perf_counter() - self.t0, 1e-9)
            self.reporter.progress.update(self.id, completed=done, rate=f"{rate:,.0f} output tok/s")

    def finish(self, wall: float) -> None:
        if self.id is not None:
            self.reporter.progress.update(self.id, completed=self.done, rate=f"{self.tokens / wall:,.1f} output tok/s")
        elif not self.reporter.quiet:
            Console(stderr=True, soft_wrap=True).print(
                f"{self.label}: {self.tokens / wall:,.1f} output tok/s ({self.done}/{self.total} requests, {wall:.1f} s)",
                highlight=False, markup=False)


# ---------------------------------------------------------------------------------------------- engines


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


@contextlib.contextmanager
def quiet_hf():
    """Silence transformers' weight-loading progress bar and warnings while a model loads."""
    from transformers.utils import logging as hf_logging

    bar, verbosity = hf_logging.is_progress_bar_enabled(), hf_logging.get_verbosity()
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bar:
            hf_logging.enable_progress_bar()


def _load_hf(model: str, device: str, dtype: str):
    from shared.tools.reference import load_hf_model

    with quiet_hf():
        return load_hf_model(model, dtype=dtype, device=device)


def _build_llm(name: str, model: str, device: str, dtype: str, max_model_len: int | None = None, **options):
    """A milestone's LLM with the options its engine takes (m1 takes no max_num_seqs): the rest are dropped."""
    llm_class = importlib.import_module(name).LLM
    accepted = engine_options(llm_class.engine_class)
    return llm_class(model=model, device=device, dtype=dtype, max_model_len=max_model_len,
                     **{k: v for k, v in options.items() if k in accepted and v is not None})


def serve(llm, requests: list[tuple[list[int], SamplingParams]], task: Task | None = None) -> list:
    """Submit every request at once and step the engine until all have finished: `LLM.generate` without its
    own bar, driven here so that the bar shows the engine's name and output tok/s."""
    engine = llm.engine
    ids = []
    try:
        for prompt, sp in requests:
            ids.append(engine.add_request(prompt, sp))
        done, tokens = {}, 0
        while engine.has_unfinished_requests():
            for out in engine.step():
                if out.finished:
                    done[out.request_id] = out
                    tokens += out.metrics.num_output_tokens
            if task is not None:
                task.update(len(done), tokens)
        return [done[i] for i in ids]
    except BaseException:  # Ctrl-C or a bad request: leave the engine empty
        for rid in ids:
            engine.abort_request(rid)
        raise


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
        stats = self.llm.engine.stats
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
        extra = dict(stats.summary(), kv_bytes_per_token=self.llm.engine.cache.bytes_per_token) if stats is not None else {}
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
                   **options) -> list[dict]:
    """Every engine serves the whole workload; each is built and warmed up once, then the engines run
    interleaved `repeat` times (A B A B ...), so that machine noise falls on all of them alike.
    Returns one summary per engine (`output_tok_per_s` is the median over the repetitions)."""
    from shared.loader import resolve_model
    from shared.tokenizer import Tokenizer

    check_engines(engines)
    requests = workload.requests(Tokenizer(resolve_model(model)).vocab_size)
    _split_cuda_budget(engines, device, options)
    runners = [HFRunner(model, device, dtype, options.get("max_num_seqs") or 64) if e == "hf" else
               MilestoneRunner(e, model, device, dtype, max_model_len, options) for e in engines]
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


# ------------------------------------------------------------------------------------------------- setup


def check_engines(engines: list[str]) -> None:
    unknown = [e for e in engines if e not in ENGINE_NAMES]
    if unknown:
        raise BenchError(f"unknown engine {', '.join(map(repr, unknown))}: choose from {' '.join(ENGINE_NAMES)} "
                         f"(shared/tools/milestones.py lists the milestones that exist)")
    if not engines:
        raise BenchError("no engines given")


def check_model(model: str) -> None:
    """A bundled name, an HF directory, a cached hub id, or random:<preset>; else BenchError (before any work)."""
    from shared.config import PRESETS
    from shared.loader import resolve_model

    if model.startswith("random:"):
        preset = model.split(":", 1)[1]
        if preset not in PRESETS:
            raise BenchError(f"unknown preset {preset!r} in --model {model}: choose from {', '.join(PRESETS)}")
        return
    try:
        resolve_model(model)
    except ValueError as err:  # ModelNotFoundError
        raise BenchError(str(err)) from None


def resolve_bench_model(model: str, dtype: str) -> str:
    """`random:<preset>` -> a temporary random-weight checkpoint of that shape; anything else unchanged."""
    if not model.startswith("random:"):
        return model
    from shared.tools.reference import random_checkpoint

    out = Path(tempfile.gettempdir()) / f"folovllm-{model.replace(':', '-')}-{dtype}"
    if not (out / "config.json").exists():
        with quiet_hf():
            random_checkpoint(model.split(":", 1)[1], out, dtype=dtype)
    return str(out)


def out_path(name: str) -> Path:
    """A bare file name goes under bench_results/ (ignored by git); a path with a directory is kept as given."""
    return Path(name) if ("/" in name or os.sep in name) else RESULTS_DIR / name


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(device: str) -> dict:
    info = {"cpu": _cpu_name(), "cores": os.cpu_count(), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "python": platform.python_version()}
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name()
    return info


def describe(setup: dict) -> str:
    """The setup in one sentence (wraps to the console's width)."""
    w = setup["workload"]
    if w["name"] == "latency":
        load = f"{w['num_requests']} requests one at a time, prompt {w['prompt_len']} → {w['output_len']} tokens"
    else:
        def span(lo_hi) -> str:
            return f"{lo_hi[0]}" if lo_hi[0] == lo_hi[1] else f"{lo_hi[0]}–{lo_hi[1]}"

        load = (f"{w['num_requests']} requests at once, prompt {span(w['prompt_len'])}, output {span(w['output_len'])}, "
                f"max_num_seqs {setup.get('max_num_seqs') or 'default'}")
        for key in ("max_model_len", "kv_cache_memory_bytes", "block_size"):
            if setup.get(key):
                load += f", {key} {setup[key]:,}"
    m = setup.get("machine", {})
    where = m.get("gpu") or f"{m.get('cpu', '?')}, {m.get('cores', '?')} cores"
    return (f"{w['name']} · {setup['model']} · {setup['device']} {setup['dtype']} · {where} · "
            f"{setup.get('threads', m.get('threads'))} torch threads · {load} · "
            f"{setup.get('repeat', 1)} repetition(s), engines interleaved · greedy, EOS ignored · {setup.get('date', '')}")


# ------------------------------------------------------------------------------------------------ tables


def _fmt(r: dict, key: str, spec: str) -> str:
    return format(r[key], spec) if r.get(key) is not None else "–"


def _ms(r: dict, key: str) -> str:
    v = r.get(key)
    return "–" if v is None else f"{v:,.0f}" if v >= 100 else f"{v:.2f}" if v < 10 else f"{v:.1f}"


def _ratio(r: dict) -> str:
    if r.get("ratio") is None:
        return "–"
    if r.get("ratio_min") is None or len(r.get("ratios", [])) < 2:
        return f"{r['ratio']:.2f}×"
    return f"{r['ratio']:.2f}× {r['ratio_min']:.2f}–{r['ratio_max']:.2f}"


def render_table(results: list[dict], setup: dict, full: bool = False) -> Table:
    """The result table. Compact (fits 80 columns): engine, median output tok/s, median ratio to the first
    engine with its min–max over the repetitions, TTFT/TPOT p50, KV utilisation, preemptions. `full`:
    every figure. Every header says which way is better."""
    base = results[0]["engine"] if results else "?"
    if not full:
        t = Table(box=box.SIMPLE_HEAD, pad_edge=False, caption=f"{UP} higher is better · {DOWN} lower is better · "
                  f"ratio: median output tok/s over {base}'s in the same round, and min–max over the rounds",
                  caption_justify="left")
        for col in ("engine", f"tok/s {UP}\nmedian", f"× {base} {UP}\nmed min–max", f"TTFT {DOWN}\np50 ms",
                    f"TPOT {DOWN}\np50 ms", f"KV {UP}\nutil", f"preempt\n{DOWN}"):
            t.add_column(col, justify="left" if col == "engine" else "right")
        for r in results:
            t.add_row(r["engine"], f"{r['output_tok_per_s']:,.1f}", _ratio(r), _ms(r, "ttft_ms_p50"), _ms(r, "tpot_ms_p50"),
                      _fmt(r, "kv_mean_utilization", ".1%"), _fmt(r, "preemptions", "d"))
        return t
    t = Table(box=box.SIMPLE_HEAD, pad_edge=False, caption=f"{UP} higher is better · {DOWN} lower is better",
              caption_justify="left")
    cols = [("engine", None), (f"tok/s {UP}\nmedian", lambda r: f"{r['output_tok_per_s']:,.1f}"),
            (f"tok/s {UP}\nmin", lambda r: _fmt(r, "output_tok_per_s_min", ",.1f")),
            (f"tok/s {UP}\nmax", lambda r: _fmt(r, "output_tok_per_s_max", ",.1f")),
            (f"× {base} {UP}\nmed min–max", _ratio),
            (f"req/s {UP}", lambda r: _fmt(r, "requests_per_s", ",.2f")),
            (f"wall s {DOWN}\nmedian", lambda r: _fmt(r, "wall_s", ".1f"))]
    for fig in ("ttft", "tpot"):
        for q in (50, 95, 99):
            cols.append((f"{fig.upper()} {DOWN}\np{q} ms", lambda r, k=f"{fig}_ms_p{q}": _ms(r, k)))
    cols += [(f"e2e {DOWN}\np50 s", lambda r: _fmt(r, "e2e_s_p50", ".2f")),
             (f"e2e {DOWN}\np99 s", lambda r: _fmt(r, "e2e_s_p99", ".2f")),
             (f"running {UP}\nmax", lambda r: _fmt(r, "max_running", "d")),
             (f"running {UP}\nmean", lambda r: _fmt(r, "mean_running", ".1f")),
             ("KV reserved\npeak tok", lambda r: _fmt(r, "kv_peak_reserved_tokens", ",d")),
             ("KV used\npeak tok", lambda r: _fmt(r, "kv_peak_used_tokens", ",d")),
             (f"KV util {UP}\nmean", lambda r: _fmt(r, "kv_mean_utilization", ".1%")),
             (f"preempt {DOWN}", lambda r: _fmt(r, "preemptions", "d"))]
    for name, _ in cols:
        t.add_column(name, justify="left" if name == "engine" else "right", no_wrap=True)
    for r in results:
        t.add_row(r["engine"], *(fn(r) for _, fn in cols[1:]))
    return t


def render(results: list[dict], setup: dict) -> Table:
    """The latency table (kept for older callers): the compact table."""
    return render_table(add_ratios(results), setup)


def render_throughput(results: list[dict], setup: dict) -> Table:
    """The throughput table (kept for older callers): every column."""
    return render_table(add_ratios(results), setup, full=True)


# figure -> (label, which way is better); compare prints these where every engine has the figure
FIGURES = {
    "output_tok_per_s": ("output tok/s", UP), "requests_per_s": ("requests/s", UP),
    "ttft_ms_p50": ("TTFT p50", DOWN), "ttft_ms_p99": ("TTFT p99", DOWN),
    "tpot_ms_p50": ("TPOT p50", DOWN), "tpot_ms_p99": ("TPOT p99", DOWN),
    "e2e_s_p50": ("e2e latency p50", DOWN), "max_running": ("peak running seqs", UP),
    "mean_running": ("mean running seqs", UP), "kv_mean_utilization": ("KV utilisation", UP),
}


def render_compare(report: dict) -> Table:
    """Each engine of one saved run against the engine before it, figure by figure, with the direction that
    is better; a ratio is green where the later engine is better, red where it is worse."""
    rs = report["results"]
    t = Table(box=box.SIMPLE_HEAD, pad_edge=False, title_justify="left", caption_justify="left",
              title="each engine's figures over the previous engine's (medians of the rounds of one run)",
              caption=f"{UP} higher is better · {DOWN} lower is better · green: the later engine is better")
    t.add_column("figure")
    t.add_column("better")
    pairs = list(itertools.pairwise(rs))
    for prev, cur in pairs:
        t.add_column(f"{cur['engine']}\n/ {prev['engine']}", justify="right")
    for key, (label, way) in FIGURES.items():
        if sum(1 for prev, cur in pairs if prev.get(key) and cur.get(key)) == 0:
            continue
        cells = []
        for prev, cur in pairs:
            if not (prev.get(key) and cur.get(key)):
                cells.append("–")
                continue
            q = cur[key] / prev[key]
            better = q > 1 if way == UP else q < 1
            cells.append(f"[{'green' if better else 'red'}]{q:.2f}×[/]" if abs(q - 1) > 0.005 else f"{q:.2f}×")
        t.add_row(label, f"{way} {'higher' if way == UP else 'lower'}", *cells)
    return t


# ------------------------------------------------------------------------------------------------- CLI


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one red line instead of usage + message
        fail(f"{message} (see --help)")


def _length_range(text: str) -> tuple[int, int]:
    lo, _, hi = text.partition(":")
    try:
        return int(lo), int(hi or lo)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected N or LO:HI, got {text!r}") from None


def _positive(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return n


def parser() -> argparse.ArgumentParser:
    ap = _Parser(prog="python -m shared.tools.bench", description="FoloVLLM benchmarks.")
    ap.add_argument("workload", choices=["latency", "throughput", "compare"],
                    help="latency: single requests, one after another, engines interleaved; "
                         "throughput: every request at once (nano-vllm style); compare: ratios of a saved run")
    ap.add_argument("result", nargs="?", help="compare: the JSON written by --out")
    ap.add_argument("--engines", nargs="+", default=None,
                    help=f"from {' '.join(ENGINE_NAMES)}; default: {ENGINES[-1]} hf (latency), "
                         f"{' '.join(ENGINES[-2:])} (throughput)")
    ap.add_argument("--model", default="tiny-qwen3", help="bundled name, HF directory, hub id, or random:<preset>")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default=None, help="default: float32 on cpu, bfloat16 on cuda")
    ap.add_argument("--num-requests", type=_positive, default=None, help="default: 5 (latency), 64 (throughput)")
    ap.add_argument("--prompt-len", type=_length_range, default=None, help="N, or LO:HI for throughput (default 128 / 32:256)")
    ap.add_argument("--output-len", type=_length_range, default=None, help="N, or LO:HI for throughput (default 64 / 32:256)")
    ap.add_argument("--max-num-seqs", type=_positive, default=None, help="engines from m2 on; hf: the static batch size")
    ap.add_argument("--max-model-len", type=_positive, default=None, help="the engines' context (sizes m2's KV slots)")
    ap.add_argument("--kv-cache-memory-bytes", type=_positive, default=None, help="the KV budget of every engine from m2 on")
    ap.add_argument("--block-size", type=_positive, default=None, help="paged engines (m3 on): positions per KV block")
    ap.add_argument("--repeat", type=_positive, default=None,
                    help="rounds of the engines interleaved (A B A B ...); default 3 (throughput), 1 (latency)")
    ap.add_argument("--threads", type=_positive, default=None,
                    help=f"torch CPU threads (default: half the cores, here {default_threads()})")
    ap.add_argument("--full", action="store_true", help="every column (the default table fits 80 columns)")
    ap.add_argument("--out", default=None, help="write the JSON result here; a bare NAME.json goes to bench_results/")
    return ap


def _output_console(full: bool = False) -> Console:
    """80 columns when not a terminal (the compact table fits); the full table gets the width it needs."""
    console = Console()
    if full:
        return Console(width=max(console.width, 250)) if console.is_terminal else Console(width=250)
    return console if console.is_terminal else Console(width=80)


def main(argv: list[str] | None = None) -> dict:
    args = parser().parse_args(argv)
    try:
        return _main(args)
    except BenchError as err:
        fail(str(err))
    except KeyboardInterrupt:
        Console(stderr=True).print("[red]interrupted[/red]")
        raise SystemExit(130) from None


def _main(args: argparse.Namespace) -> dict:
    if args.workload == "compare":
        path = Path(args.result) if args.result else None
        if path is None or not path.is_file():
            raise BenchError(f"compare needs the JSON file of a run (--out of latency or throughput), got {args.result}")
        try:
            report = json.loads(path.read_text())
            table = render_compare(report)
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise BenchError(f"{path} is not a result written by --out ({type(err).__name__}: {err})") from None
        console = _output_console()
        console.print(f"[bold]setup[/bold] {escape(describe(report['setup']))}", highlight=False)
        console.print(table)
        return report
    if args.result is not None:
        raise BenchError(f"unexpected argument {args.result!r}: only compare takes a file")
    engines = args.engines or ([ENGINES[-1], "hf"] if args.workload == "latency" else ENGINES[-2:])
    check_engines(engines)
    check_model(args.model)
    dtype = args.dtype or ("bfloat16" if args.device.startswith("cuda") else "float32")
    from shared.config import DTYPES

    if dtype not in DTYPES:
        raise BenchError(f"unknown dtype {dtype!r}: choose from {', '.join(DTYPES)}")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise BenchError(f"--device {args.device}: CUDA is not available on this machine")
    if args.workload == "latency":
        prompt_len, output_len = args.prompt_len or (128, 128), args.output_len or (64, 64)
        if prompt_len[0] != prompt_len[1] or output_len[0] != output_len[1]:
            raise BenchError("the latency workload takes fixed lengths (N), not ranges")
        workload = Workload("latency", args.num_requests or 5, prompt_len[0], output_len[0])
    else:
        workload = ThroughputWorkload(args.num_requests or 64, args.prompt_len or (32, 256), args.output_len or (32, 256))
    repeat = args.repeat or (1 if args.workload == "latency" else 3)
    torch.set_num_threads(args.threads or default_threads())
    setup = {"model": args.model, "device": args.device, "dtype": dtype, "threads": torch.get_num_threads(),
             "repeat": repeat, "engines": engines, "machine": machine_info(args.device), "date": time.strftime("%Y-%m-%d"),
             "workload": asdict(workload)}
    options = dict(max_num_seqs=args.max_num_seqs, kv_cache_memory_bytes=args.kv_cache_memory_bytes, block_size=args.block_size)
    if args.workload == "throughput":
        _split_cuda_budget(engines, args.device, options)  # on CUDA: each engine's share, written down
        setup.update(max_model_len=args.max_model_len, **options)
    console = _output_console()
    console.print(f"[bold]setup[/bold] {escape(describe(setup))}", highlight=False)
    model = resolve_bench_model(args.model, dtype)
    try:
        if args.workload == "latency":
            results = add_ratios([r.summary() for r in run_latency(engines, model, args.device, dtype, workload, repeat)])
        else:
            results = run_throughput(engines, model, args.device, dtype, workload, max_model_len=args.max_model_len,
                                     repeat=repeat, **options)
    except ValueError as err:  # the engines reject a bad option or a request that does not fit, before any work
        raise BenchError(str(err)) from None
    report = {"setup": setup, "results": results}
    (_output_console(True) if args.full else console).print(render_table(results, setup, full=args.full))
    if args.out:
        path = out_path(args.out)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(report, indent=1))
        except OSError as err:
            raise BenchError(f"cannot write {path}: {err.strerror}") from None
        Console(stderr=True, soft_wrap=True).print(f"wrote {path}", highlight=False, markup=False)
    return report


if __name__ == "__main__":
    main(sys.argv[1:])
