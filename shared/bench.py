"""Benchmark harness shared by every milestone: named workloads, metrics, a JSON result and a rich table.

    python -m shared.bench latency --engines m1_basic hf --prompt-len 128 --output-len 64 --repeats 5

Engines are milestone package names (`m1_basic`, ...) or `hf` (transformers `generate`). Every engine in
one invocation runs the same requests on the same machine, and the table reports each one's ratio to
the first engine: comparisons are ratios measured in one run. `--model random:qwen3-0.6b` builds a
random-weight checkpoint of that preset shape (see shared/config.py PRESETS) for GPU runs.
"""

from __future__ import annotations

import argparse
import importlib
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

    from shared.reference import load_hf_model

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


def resolve_bench_model(model: str, dtype: str) -> str:
    """`random:<preset>` -> a temporary random-weight checkpoint of that shape; anything else unchanged."""
    if not model.startswith("random:"):
        return model
    from shared.reference import random_checkpoint

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


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m shared.bench", description="FoloVLLM benchmarks.")
    ap.add_argument("workload", choices=["latency"], help="latency: single requests, one after another, engines interleaved")
    ap.add_argument("--engines", nargs="+", default=["m1_basic", "hf"])
    ap.add_argument("--model", default="tiny-qwen3")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default=None, help="default: float32 on cpu, bfloat16 on cuda")
    ap.add_argument("--num-requests", type=int, default=5)
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--output-len", type=int, default=64)
    ap.add_argument("--out", type=Path, default=None, help="write the JSON result here")
    args = ap.parse_args(argv)
    dtype = args.dtype or ("bfloat16" if args.device.startswith("cuda") else "float32")
    try:
        workload = Workload(args.workload, args.num_requests, args.prompt_len, args.output_len)
    except ValueError as e:
        ap.error(str(e))
    model = resolve_bench_model(args.model, dtype)
    results = [r.summary() for r in run_latency(args.engines, model, args.device, dtype, workload)]
    setup = {"model": args.model, "device": args.device, "dtype": dtype, "workload": asdict(workload),
             "machine": machine_info(args.device), "date": time.strftime("%Y-%m-%d")}
    report = {"setup": setup, "results": results}
    Console().print(render(results, setup))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
