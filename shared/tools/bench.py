"""Benchmark harness shared by every milestone: named workloads, metrics, a JSON result and a rich table.

    python -m shared.tools.bench latency --engines m1_basic hf --prompt-len 128 --output-len 64
    python -m shared.tools.bench throughput --engines m1_basic m2_batching --num-requests 64 \
        --prompt-len 32:256 --output-len 32:256 --out results.json
    python -m shared.tools.bench compare results.json

Engines are milestone package names (`m1_basic`, ...) or `hf` (transformers `generate`). Every engine in
one invocation runs the same requests on the same machine, and the table reports each one's ratio to
the first engine: comparisons are ratios measured in one run. `compare` prints each engine of a saved
run against the one before it (m2 vs m1, m3 vs m2, ...). `--model random:qwen3-0.6b` builds a
random-weight checkpoint of that preset shape (see shared/config.py PRESETS) for GPU runs.
"""

from __future__ import annotations

import argparse
import importlib
import itertools
import json
import os
import platform
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from shared.llm import engine_options
from shared.sampling import SamplingParams


@dataclass
class Workload:
    name: str
    num_requests: int
    prompt_len: int
    output_len: int
    seed: int = 0

    def __post_init__(self) -> None:
        if self.num_requests < 1 or self.prompt_len < 1:
            raise ValueError(f"num_requests and prompt_len must be >= 1, got {self.num_requests}, {self.prompt_len}")
        if self.output_len < 2:
            raise ValueError(f"output_len must be >= 2 so that TPOT is defined, got {self.output_len}")

    def prompts(self, vocab_size: int) -> list[list[int]]:
        """Random token ids (as nano-vllm's benchmark), avoiding the first 16 ids where special tokens live."""
        g = torch.Generator().manual_seed(self.seed)
        return [torch.randint(16, vocab_size, (self.prompt_len,), generator=g).tolist() for _ in range(self.num_requests)]


@dataclass
class Result:
    engine: str
    ttft_s: list[float] = field(default_factory=list)
    tpot_s: list[float] = field(default_factory=list)
    e2e_s: list[float] = field(default_factory=list)
    output_tokens: int = 0
    wall_s: float = 0.0

    def summary(self) -> dict:
        def pct(xs, q):
            return statistics.quantiles(xs, n=100, method="inclusive")[q - 1] if len(xs) > 1 else xs[0]

        return {
            "engine": self.engine,
            "ttft_ms_p50": 1e3 * pct(self.ttft_s, 50), "ttft_ms_p95": 1e3 * pct(self.ttft_s, 95),
            "tpot_ms_p50": 1e3 * pct(self.tpot_s, 50), "tpot_ms_p95": 1e3 * pct(self.tpot_s, 95),
            "e2e_s_p50": pct(self.e2e_s, 50),
            "output_tok_per_s": self.output_tokens / self.wall_s,
            "requests_per_s": len(self.e2e_s) / self.wall_s,
            "wall_s": self.wall_s, "output_tokens": self.output_tokens,
        }


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def milestone_runner(name: str, model: str, device: str, dtype: str, workload: Workload, **options):
    """A function that serves one prompt on a milestone engine (greedy, EOS ignored) -> (ttft, tpot, e2e, tokens)."""
    llm = importlib.import_module(name).LLM(model=model, device=device, dtype=dtype, **options)
    params = SamplingParams(temperature=0, max_tokens=workload.output_len, ignore_eos=True)

    def one(ids: list[int]) -> tuple[float, float, float, int]:
        out = llm.generate([ids], params, use_tqdm=False)[0]
        _sync(device)
        m = out.metrics
        return m.ttft, m.tpot, m.e2e, m.num_output_tokens

    return one, llm.tokenizer.vocab_size


def hf_runner(model: str, device: str, dtype: str, workload: Workload):
    """The same service through transformers `generate`; a logits processor timestamps every step."""
    from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList

    from shared.tools.reference import load_hf_model

    hf = load_hf_model(model, dtype=dtype, device=device)
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

    return one, hf.config.vocab_size


def run_latency(engines: list[str], model: str, device: str, dtype: str, workload: Workload) -> list[Result]:
    """Requests one at a time, the engines interleaved request by request, so that machine noise and
    drift (thermal, other processes) fall on all of them alike."""
    runners = [hf_runner(model, device, dtype, workload) if e == "hf" else
               milestone_runner(e, model, device, dtype, workload) for e in engines]
    prompts = workload.prompts(min(v for _, v in runners))
    results = [Result(e) for e in engines]
    for one, _ in runners:
        one(prompts[0])  # warm-up: allocator, kernels, caches
    for prompt in prompts:
        for (one, _), res in zip(runners, results):
            ttft, tpot, e2e, n = one(prompt)
            res.ttft_s.append(ttft)
            res.tpot_s.append(tpot)
            res.e2e_s.append(e2e)
            res.output_tokens += n
            res.wall_s += e2e
    return results


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
                raise ValueError(f"{what} range must satisfy 1 <= lo <= hi, got {lo}:{hi}")
        if self.num_requests < 1:
            raise ValueError(f"num_requests must be >= 1, got {self.num_requests}")

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


def run_throughput_milestone(name: str, model: str, device: str, dtype: str, requests, max_model_len: int | None,
                             options: dict) -> dict:
    llm_class = importlib.import_module(name).LLM
    accepted = engine_options(llm_class.engine_class)  # m1 takes no max_num_seqs: pass each engine what it knows
    llm = llm_class(model=model, device=device, dtype=dtype, max_model_len=max_model_len,
                    **{k: v for k, v in options.items() if k in accepted and v is not None})
    greedy = [SamplingParams(temperature=0, max_tokens=o, ignore_eos=True) for _, o in requests]
    llm.generate([ids for ids, _ in requests[:2]], greedy[:2], use_tqdm=False)  # warm-up
    stats = getattr(llm.engine, "stats", None)
    if stats is not None:
        stats.history.clear()
    _sync(device)
    t0 = time.perf_counter()
    outs = llm.generate([ids for ids, _ in requests], greedy, use_tqdm=False)
    _sync(device)
    wall = time.perf_counter() - t0
    res = Result(name, wall_s=wall, output_tokens=sum(o.metrics.num_output_tokens for o in outs))
    for o in outs:
        res.ttft_s.append(o.metrics.ttft)
        res.tpot_s.append(o.metrics.tpot)
        res.e2e_s.append(o.metrics.e2e)
    summary = res.summary()
    if stats is not None:
        summary.update(stats.summary())
        summary["kv_bytes_per_token"] = llm.engine.cache.bytes_per_token
    return summary


def run_throughput_hf(model: str, device: str, dtype: str, requests, batch_size: int) -> dict:
    """Static batching, as `transformers.generate` offers it: batches of `batch_size` in arrival order,
    left-padded; each batch runs until its longest output is done. Only the tokens each request asked for
    are counted, so the work spent on finished rows and padding shows up as lost throughput."""
    from transformers import GenerationConfig

    from shared.tools.reference import load_hf_model

    hf = load_hf_model(model, dtype=dtype, device=device)

    def run(batch):
        width = max(len(ids) for ids, _ in batch)
        x = torch.tensor([[0] * (width - len(ids)) + ids for ids, _ in batch], device=device)
        mask = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids, _ in batch], device=device)
        gen = GenerationConfig(do_sample=False, max_new_tokens=max(o for _, o in batch), eos_token_id=[], pad_token_id=0)
        with torch.inference_mode():
            hf.generate(x, attention_mask=mask, generation_config=gen)

    run(requests[:2])  # warm-up
    _sync(device)
    t0 = time.perf_counter()
    e2e = []
    for i in range(0, len(requests), batch_size):
        run(requests[i:i + batch_size])
        _sync(device)
        e2e += [time.perf_counter() - t0] * len(requests[i:i + batch_size])
    wall = time.perf_counter() - t0
    out_tokens = sum(o for _, o in requests)
    return {"engine": "hf", "output_tok_per_s": out_tokens / wall, "requests_per_s": len(requests) / wall,
            "e2e_s_p50": statistics.median(e2e), "wall_s": wall, "output_tokens": out_tokens, "batch_size": batch_size}


def run_throughput(engines: list[str], model: str, device: str, dtype: str, workload: ThroughputWorkload,
                   max_model_len: int | None = None, **options) -> list[dict]:
    """Every engine serves the whole workload, one engine after another, in one process."""
    from shared.loader import resolve_model
    from shared.tokenizer import Tokenizer

    requests = workload.requests(Tokenizer(resolve_model(model)).vocab_size)
    results = []
    for name in engines:
        if name == "hf":
            results.append(run_throughput_hf(model, device, dtype, requests, options.get("max_num_seqs") or 64))
        else:
            results.append(run_throughput_milestone(name, model, device, dtype, requests, max_model_len, options))
        Console(stderr=True).print(f"[dim]{name}: {results[-1]['output_tok_per_s']:,.1f} output tok/s[/dim]")
    return results


def resolve_bench_model(model: str, dtype: str) -> str:
    """`random:<preset>` -> a temporary random-weight checkpoint of that shape; anything else unchanged."""
    if not model.startswith("random:"):
        return model
    from shared.tools.reference import random_checkpoint

    out = Path(tempfile.gettempdir()) / f"folovllm-{model.replace(':', '-')}-{dtype}"
    if not (out / "config.json").exists():
        random_checkpoint(model.split(":", 1)[1], out, dtype=dtype)
    return str(out)


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


def render(results: list[dict], setup: dict) -> Table:
    """The latency table: TTFT/TPOT percentiles and each engine's tok/s ratio to the first engine."""
    base = results[0]
    t = Table(title=f"{setup['workload']['name']} · {setup['model']} · {setup['device']} {setup['dtype']} · "
                    f"{setup['workload']['num_requests']} req × prompt {setup['workload']['prompt_len']} "
                    f"→ {setup['workload']['output_len']} tokens")
    for col in ("engine", "TTFT p50 ms", "TTFT p95 ms", "TPOT p50 ms", "TPOT p95 ms", "output tok/s",
                f"tok/s vs {base['engine']}"):
        t.add_column(col, justify="right")
    for r in results:
        t.add_row(r["engine"], f"{r['ttft_ms_p50']:.2f}", f"{r['ttft_ms_p95']:.2f}", f"{r['tpot_ms_p50']:.2f}",
                  f"{r['tpot_ms_p95']:.2f}", f"{r['output_tok_per_s']:,.1f}",
                  f"{r['output_tok_per_s'] / base['output_tok_per_s']:.2f}×")
    return t


def _fmt(r: dict, key: str, spec: str) -> str:
    return format(r[key], spec) if r.get(key) is not None else "–"


def render_throughput(results: list[dict], setup: dict) -> Table:
    w = setup["workload"]
    base = results[0]
    t = Table(title=f"throughput · {setup['model']} · {setup['device']} {setup['dtype']} · {w['num_requests']} req, "
                    f"prompt {w['prompt_len'][0]}–{w['prompt_len'][1]}, output {w['output_len'][0]}–{w['output_len'][1]}, "
                    f"max_num_seqs {setup.get('max_num_seqs')}")
    for col in ("engine", "output tok/s", f"vs {base['engine']}", "wall s", "TTFT p50 ms", "TPOT p50 ms",
                "max running", "mean running", "KV reserved (peak tok)", "KV used (peak tok)", "KV utilisation",
                "preemptions"):
        t.add_column(col, justify="right")
    for r in results:
        t.add_row(r["engine"], f"{r['output_tok_per_s']:,.1f}", f"{r['output_tok_per_s'] / base['output_tok_per_s']:.2f}×",
                  _fmt(r, "wall_s", ".1f"), _fmt(r, "ttft_ms_p50", ".1f"), _fmt(r, "tpot_ms_p50", ".2f"),
                  _fmt(r, "max_running", "d"), _fmt(r, "mean_running", ".1f"), _fmt(r, "kv_peak_reserved_tokens", ",d"),
                  _fmt(r, "kv_peak_used_tokens", ",d"), _fmt(r, "kv_mean_utilization", ".1%"), _fmt(r, "preemptions", "d"))
    return t


def render_compare(report: dict) -> Table:
    """Each engine of one saved run against the engine before it: the milestone-vs-milestone ratios."""
    rs = report["results"]
    setup = report["setup"]
    t = Table(title=f"{setup['workload']['name']} · {setup['model']} · ratios to the previous engine, one run")
    t.add_column("engines")
    keys = [k for k in ("output_tok_per_s", "requests_per_s", "ttft_ms_p50", "tpot_ms_p50", "e2e_s_p50",
                        "kv_peak_reserved_tokens", "max_running", "mean_running") if all(r.get(k) for r in rs)]
    for k in keys:
        t.add_column(k, justify="right")
    for prev, cur in itertools.pairwise(rs):
        t.add_row(f"{cur['engine']} / {prev['engine']}", *(f"{cur[k] / prev[k]:.2f}×" for k in keys))
    return t


def _length_range(text: str) -> tuple[int, int]:
    lo, _, hi = text.partition(":")
    try:
        return int(lo), int(hi or lo)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected N or LO:HI, got {text!r}") from None


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m shared.tools.bench", description="FoloVLLM benchmarks.")
    ap.add_argument("workload", choices=["latency", "throughput", "compare"],
                    help="latency: single requests, one after another, engines interleaved; "
                         "throughput: every request at once (nano-vllm style); compare: ratios of a saved run")
    ap.add_argument("result", nargs="?", type=Path, help="compare: the JSON written by --out")
    ap.add_argument("--engines", nargs="+", default=None,
                    help="default: m1_basic hf (latency), m1_basic m2_batching (throughput)")
    ap.add_argument("--model", default="tiny-qwen3")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default=None, help="default: float32 on cpu, bfloat16 on cuda")
    ap.add_argument("--num-requests", type=int, default=None, help="default: 5 (latency), 64 (throughput)")
    ap.add_argument("--prompt-len", type=_length_range, default=None, help="N, or LO:HI for throughput (default 128 / 32:256)")
    ap.add_argument("--output-len", type=_length_range, default=None, help="N, or LO:HI for throughput (default 64 / 32:256)")
    ap.add_argument("--max-num-seqs", type=int, default=None, help="engines from m2 on; hf: the static batch size")
    ap.add_argument("--max-model-len", type=int, default=None, help="the engines' context (sizes m2's KV slots)")
    ap.add_argument("--kv-cache-memory-bytes", type=int, default=None, help="the KV budget of every engine from m2 on")
    ap.add_argument("--block-size", type=int, default=None, help="paged engines (m3 on): positions per KV block")
    ap.add_argument("--out", type=Path, default=None, help="write the JSON result here")
    args = ap.parse_args(argv)
    if args.workload == "compare":
        if args.result is None or not args.result.exists():
            ap.error(f"compare needs the JSON file of a run (--out of latency or throughput), got {args.result}")
        report = json.loads(args.result.read_text())
        Console(width=None if Console().is_terminal else 180).print(render_compare(report))
        return report
    dtype = args.dtype or ("bfloat16" if args.device.startswith("cuda") else "float32")
    setup = {"model": args.model, "device": args.device, "dtype": dtype,
             "machine": machine_info(args.device), "date": time.strftime("%Y-%m-%d")}
    try:
        if args.workload == "latency":
            prompt_len, output_len = args.prompt_len or (128, 128), args.output_len or (64, 64)
            if prompt_len[0] != prompt_len[1] or output_len[0] != output_len[1]:
                raise ValueError("the latency workload takes fixed lengths (N), not ranges")
            workload = Workload("latency", args.num_requests or 5, prompt_len[0], output_len[0])
        else:
            workload = ThroughputWorkload(args.num_requests or 64, args.prompt_len or (32, 256),
                                          args.output_len or (32, 256))
    except ValueError as e:
        ap.error(str(e))
    model = resolve_bench_model(args.model, dtype)
    setup["workload"] = asdict(workload)
    if args.workload == "latency":
        results = [r.summary() for r in run_latency(args.engines or ["m1_basic", "hf"], model, args.device, dtype, workload)]
        table = render(results, setup)
    else:
        setup.update(max_num_seqs=args.max_num_seqs, max_model_len=args.max_model_len,
                     kv_cache_memory_bytes=args.kv_cache_memory_bytes, block_size=args.block_size)
        results = run_throughput(args.engines or ["m1_basic", "m2_batching"], model, args.device, dtype, workload,
                                 max_model_len=args.max_model_len, max_num_seqs=args.max_num_seqs,
                                 kv_cache_memory_bytes=args.kv_cache_memory_bytes, block_size=args.block_size)
        table = render_throughput(results, setup)
    report = {"setup": setup, "results": results}
    console = Console()
    if not console.is_terminal:
        console = Console(width=180)  # a log file or a notebook: no terminal width to fit
    console.print(table)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
