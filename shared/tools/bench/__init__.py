"""Benchmark harness shared by every milestone: named workloads, metrics, a JSON result and a rich table.

    python -m shared.tools.bench latency                      # the newest milestone against HF generate
    python -m shared.tools.bench throughput --num-requests 64 --prompt-len 32:256 --output-len 32:256 \\
        --repeat 3 --out run.json                             # the last two milestones, 3 interleaved runs
    python -m shared.tools.bench online --rate 4 --long-prompts 3 --long-len 2000:6000 \\
        --engines m4_flash m5_chunked:max_num_batched_tokens=256 --out online.json   # requests arriving over time
    python -m shared.tools.bench compare bench_results/run.json
    python -m shared.tools.bench attention --model random:qwen3-0.6b --out attn.json   # one attention layer per
                                                              # M4 backend, prefill and decode, 512..8K tokens

Engines are milestone package names (`shared/tools/milestones.py` ENGINES) or `hf` (transformers
`generate`). Every engine in one invocation runs the same requests on the same machine, and the table
reports each one's ratio to the first engine: comparisons are ratios measured in one run. With
`--repeat N` each engine is built and warmed up once, then the engines run interleaved A B A B ... N
times; the table gives the median and the min–max spread, and the JSON keeps every repetition.
`compare` prints each engine of a saved run against the one before it (m2 vs m1, m3 vs m2, ...).
`--model random:qwen3-0.6b` builds a random-weight checkpoint of that preset shape (shared/config.py
PRESETS) for GPU runs. `--threads N` sets torch's CPU threads (default: half the cores, see
docs/benchmarks.md "Threads"). A mistake in the arguments is one red line on stderr and exit status 2.
`online` replays short requests arriving as a Poisson process, with long prompts evenly spaced among them, in
wall-clock time through each engine's `add_request` / `step`: TTFT from the scheduled arrival, ITL (the gaps
between a request's tokens) and the longest stall, TTFT of the short requests behind a long prompt, and the step
timeline (`plot_timeline`, `plot_tradeoff` draw it); engines are specs, `name:key=value,...`, and each figure is
also given as how many times better than the first spec; from Python, `run_online(...)` returns what `--out` writes.
`prefix ttft|multiturn|kv-sweep` measures M6's prefix cache: a prompt cached but for its last block against the
same prompt uncached, hit rate and TTFT per turn of many chats, and hit rate against KV memory for the fcfs and
lpm waiting orders; `--prefix-len N` gives the throughput and online requests a shared prefix (a system prompt).
`serve --launch m6_prefix --launch m5_chunked --rate 4` measures engines behind the HTTP server (`python -m
shared.serve`) as clients see them: Poisson arrivals, streamed requests, TTFT, ITL and end-to-end percentiles.
`attention` times one attention layer of the model's shape per M4 backend (naive, sdpa, triton, flash-attn)
and measures its peak memory, each backend against naive in the same run; from Python, `run_attention(...)`
returns the same dict that `--out` writes.

The files, one concept each:

    checks.py      BenchError (one red line, exit 2), the engine names, the model check
    workloads.py   Workload (latency), ThroughputWorkload, OnlineWorkload: the requests every engine gets
    engines.py     building a milestone LLM or an HF model, random checkpoints, `serve`
    progress.py    Reporter and Task: a bar per engine run, or one line on stderr
    results.py     Result (per-request times, per-repetition totals), summaries, ratios (factors) to the first engine
    throughput.py  MilestoneRunner, HFRunner (static batching), run_throughput
    latency.py     run_latency: one request at a time, the engines interleaved
    online.py      engine specs, replay (arrivals in wall-clock time), replay_metrics, run_online, summary_only
    prefix.py      the prefix-cache scenarios: run_prefix_ttft, run_multiturn, run_kv_sweep
    http_load.py   `serve`: Poisson load over HTTP against OpenAI-compatible servers (launched, or at --url)
    plots.py       plot_timeline (tokens per step around the long prompts), plot_tradeoff (TTFT vs ITL p99),
                   plot_prefix_ttft, plot_multiturn, plot_hit_rate_vs_kv
    attention.py   the attention workload: cases on a shuffled paged cache, time, peak memory, OOM prediction
    machine.py     machine_info, default_threads, total_memory_bytes, gpu_peaks (datasheet peaks by card name)
    tables.py      describe (the setup in a sentence), render_table, render_compare, render_online, render_attention
    cli.py         the arguments, main, --out
"""

from shared.tools.bench.attention import cpu_peak_bytes, predict_peak_bytes, run_attention
from shared.tools.bench.checks import ENGINE_NAMES, BenchError, check_engines, check_model, fail
from shared.tools.bench.cli import RESULTS_DIR, main, out_path, parser, print_attention
from shared.tools.bench.engines import quiet_hf, resolve_bench_model, serve
from shared.tools.bench.latency import hf_runner, milestone_runner, run_latency
from shared.tools.bench.machine import default_threads, gpu_peaks, machine_info
from shared.tools.bench.online import (
    ONLINE_ENGINES,
    check_specs,
    parse_spec,
    replay,
    replay_metrics,
    run_online,
    summary_only,
)
from shared.tools.bench.plots import plot_hit_rate_vs_kv, plot_multiturn, plot_prefix_ttft, plot_timeline, plot_tradeoff
from shared.tools.bench.prefix import run_kv_sweep, run_multiturn, run_prefix_ttft
from shared.tools.bench.progress import Reporter, Task
from shared.tools.bench.results import Result, add_factors, add_ratios
from shared.tools.bench.tables import (
    DOWN,
    FIGURES,
    UP,
    describe,
    render,
    render_attention,
    render_compare,
    render_online,
    render_table,
    render_throughput,
)
from shared.tools.bench.throughput import HFRunner, MilestoneRunner, run_throughput
from shared.tools.bench.workloads import OnlineWorkload, ThroughputWorkload, Workload

__all__ = [
    "DOWN", "ENGINE_NAMES", "FIGURES", "ONLINE_ENGINES", "RESULTS_DIR", "UP", "BenchError", "HFRunner",
    "MilestoneRunner", "OnlineWorkload", "Reporter", "Result", "Task", "ThroughputWorkload", "Workload", "add_factors",
    "add_ratios", "check_engines", "check_model", "check_specs", "cpu_peak_bytes", "default_threads", "describe",
    "fail", "gpu_peaks", "hf_runner", "machine_info", "main", "milestone_runner", "out_path", "parse_spec", "parser",
    "plot_hit_rate_vs_kv", "plot_multiturn", "plot_prefix_ttft", "plot_timeline", "plot_tradeoff", "predict_peak_bytes",
    "print_attention", "quiet_hf", "render", "render_attention", "render_compare", "render_online", "render_table",
    "render_throughput", "replay", "replay_metrics", "resolve_bench_model", "run_attention", "run_kv_sweep",
    "run_latency", "run_multiturn", "run_online", "run_prefix_ttft", "run_throughput", "serve", "summary_only",
]
