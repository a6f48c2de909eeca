"""The command line: `python -m shared.tools.bench latency|throughput|online|attention|compare|prefix|quant|serve ...`. Parses
the arguments (a mistake is one red line, exit status 2), builds the workload and the setup, runs the engines (or,
for `attention`, one attention layer per M4 backend; for `online`, a replay of requests arriving over time),
prints the table and writes the JSON of `--out` (a bare NAME.json goes to bench_results/). `prefix SCENARIO ...`
(M6's prefix cache: ttft, multiturn, kv-sweep) has arguments of its own, parsed by prefix.py, and so has
`quant SCENARIO ...` (M7's GPTQ weights: memory, ppl, decode), parsed by quant.py, and `serve ...` (a load over HTTP
against an OpenAI-compatible server, running or launched: TTFT, ITL, E2E, throughput), parsed by serve.py."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import NoReturn

import torch
from rich.console import Console
from rich.markup import escape

from shared.config import DTYPES
from shared.tools.bench.attention import BACKEND_NAMES, DEFAULT_BATCHES, DEFAULT_CONTEXTS, DEFAULT_REPEAT, run_attention
from shared.tools.bench.checks import ENGINE_NAMES, BenchError, check_engines, check_model, fail
from shared.tools.bench.engines import resolve_bench_model
from shared.tools.bench.latency import run_latency
from shared.tools.bench.machine import default_threads, machine_info
from shared.tools.bench.online import check_specs, online_setup, run_online
from shared.tools.bench.results import add_ratios
from shared.tools.bench.tables import describe, render_attention, render_compare, render_online, render_table
from shared.tools.bench.throughput import _split_cuda_budget, run_throughput
from shared.tools.bench.workloads import OnlineWorkload, ThroughputWorkload, Workload
from shared.tools.milestones import ENGINES

RESULTS_DIR = Path("bench_results")  # where a bare --out NAME.json goes (ignored by git)


def out_path(name: str) -> Path:
    """A bare file name goes under bench_results/ (ignored by git); a path with a directory is kept as given."""
    return Path(name) if ("/" in name or os.sep in name) else RESULTS_DIR / name


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one red line instead of usage + message
        fail(f"{message} (see --help)")


def _length_range(text: str) -> tuple[int, int]:
    lo, _, hi = text.partition(":")
    try:
        return int(lo), int(hi or lo)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected N or LO:HI, got {text!r}") from None


def _int_at_least(low: int, what: str):
    """An argparse type: an integer >= `low`, else the one-line error "expected `what`, got ..."."""
    def parse(text: str) -> int:
        try:
            n = int(text)
        except ValueError:
            n = low - 1
        if n < low:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return n

    return parse


_positive = _int_at_least(1, "a positive integer")
_count = _int_at_least(0, "an integer >= 0")


def _positive_float(text: str) -> float:
    try:
        x = float(text)
    except ValueError:
        x = 0.0
    if not x > 0 or x == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return x


WORKLOADS = ("latency", "throughput", "online", "attention", "compare", "prefix", "quant", "serve")
# the options only one kind of workload takes: given to the other, they are a mistake (one red line)
ENGINE_OPTIONS = ("engines", "num_requests", "prompt_len", "output_len", "max_num_seqs", "max_model_len",
                  "kv_cache_memory_bytes", "full")
ATTENTION_OPTIONS = ("contexts", "batches", "backends", "memory_limit_gib")
ONLINE_OPTIONS = ("rate", "long_prompts", "long_len", "long_output_len", "behind_s")
PREFIX_OPTIONS = ("prefix_len", "num_prefixes")  # throughput and online: a shared prefix in front of every prompt
NOT_ONLINE_OPTIONS = ("block_size",)  # online: a block size goes in an engine spec (m5_chunked:block_size=32)
ONLINE_ENGINE_DEFAULT = ["m4_flash", "m5_chunked"]


def parser() -> argparse.ArgumentParser:
    ap = _Parser(prog="python -m shared.tools.bench", description="FoloVLLM benchmarks.")
    ap.add_argument("workload", choices=WORKLOADS,
                    help="latency: single requests, one after another, engines interleaved; "
                         "throughput: every request at once (nano-vllm style); online: short requests arriving over "
                         "time (Poisson) with long prompts among them, replayed in wall-clock time; attention: one "
                         "attention layer of the "
                         "model's shape per M4 backend, prefill and decode at growing contexts, time and peak memory; "
                         "compare: ratios of a saved run (or an attention run's tables); prefix: M6's prefix "
                         "cache, scenarios ttft (a cached prompt's TTFT), multiturn (chats, hit rate per turn) and "
                         "kv-sweep (hit rate against KV memory, fcfs vs lpm): see `prefix --help`; quant: M7's GPTQ "
                         "weights, scenarios memory, ppl and decode: see `quant --help`; serve: requests over HTTP to an "
                         "OpenAI-compatible server (--url) or to servers it starts (--launch m6_prefix ...), Poisson "
                         "arrivals, TTFT / ITL / E2E and throughput: see `serve --help`")
    ap.add_argument("result", nargs="?", help="compare: the JSON written by --out")
    ap.add_argument("--engines", nargs="+", default=None,
                    help=f"from {' '.join(ENGINE_NAMES)}; default: {ENGINES[-1]} hf (latency), "
                         f"{' '.join(ENGINES[-2:])} (throughput), {' '.join(ONLINE_ENGINE_DEFAULT)} (online, where each "
                         "is a spec: name or name:key=value,... e.g. m5_chunked:max_num_batched_tokens=256,"
                         "long_prefill_token_threshold=0)")
    ap.add_argument("--model", default="tiny-qwen3", help="bundled name, HF directory, hub id, or random:<preset>")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default=None, help="default: float32 on cpu, bfloat16 on cuda")
    ap.add_argument("--num-requests", type=_positive, default=None,
                    help="default: 5 (latency), 64 (throughput), 48 short requests (online)")
    ap.add_argument("--prompt-len", type=_length_range, default=None,
                    help="N, or LO:HI for throughput and online (default 128 / 32:256 / 32:128)")
    ap.add_argument("--output-len", type=_length_range, default=None,
                    help="N, or LO:HI for throughput and online (default 64 / 32:256 / 64:192)")
    ap.add_argument("--max-num-seqs", type=_positive, default=None, help="engines from m2 on; hf: the static batch size")
    ap.add_argument("--max-model-len", type=_positive, default=None, help="the engines' context (sizes m2's KV slots)")
    ap.add_argument("--kv-cache-memory-bytes", type=_positive, default=None, help="the KV budget of every engine from m2 on")
    ap.add_argument("--block-size", type=_positive, default=None,
                    help="paged engines (m3 on) and attention: positions per KV block (attention default 16)")
    ap.add_argument("--repeat", type=_positive, default=None,
                    help="rounds of the engines (attention: backends) interleaved (A B A B ...); default 3 (throughput), "
                         f"1 (latency, online), {DEFAULT_REPEAT} (attention)")
    ap.add_argument("--threads", type=_positive, default=None,
                    help=f"torch CPU threads (default: half the cores, here {default_threads()})")
    ap.add_argument("--engine-model", action="append", default=None, metavar="ENGINE=MODEL",
                    help="throughput: run ENGINE on MODEL instead of --model (for example m7_gptq=DIR, a GPTQ checkpoint "
                         "of the same model; the chart's m7 bar); repeatable")
    ap.add_argument("--prefix-len", type=_count, default=None,
                    help="throughput and online: a shared prefix of N tokens (a system prompt) in front of every prompt, "
                         "the drawn prompt after it (default 0: none)")
    ap.add_argument("--num-prefixes", type=_positive, default=None,
                    help="throughput and online: distinct shared prefixes, each request's drawn at random (default 1)")
    ap.add_argument("--full", action="store_true", help="every column (the default table fits 80 columns)")
    ap.add_argument("--rate", type=_positive_float, default=None, help="online: short requests per second, Poisson (default 4)")
    ap.add_argument("--long-prompts", type=_count, default=None,
                    help="online: long prompts, evenly spaced among the short requests (default 3)")
    ap.add_argument("--long-len", type=_length_range, default=None,
                    help="online: long prompt length, N or LO:HI (default 2000:6000)")
    ap.add_argument("--long-output-len", type=_positive, default=None, help="online: output tokens of a long prompt (default 16)")
    ap.add_argument("--behind-s", type=_positive_float, default=None,
                    help="online: a short request arriving within this many seconds after a long prompt is behind it "
                         "(default 2)")
    ap.add_argument("--contexts", type=_positive, nargs="+", default=None,
                    help=f"attention: context lengths N (default {' '.join(map(str, DEFAULT_CONTEXTS))})")
    ap.add_argument("--batches", type=_positive, nargs="+", default=None,
                    help=f"attention: decode batch sizes (default {' '.join(map(str, DEFAULT_BATCHES))})")
    ap.add_argument("--backends", nargs="+", default=None,
                    help=f"attention: from {' '.join(BACKEND_NAMES)}; default naive sdpa (cpu), naive sdpa triton "
                         "(cuda), + flash-attn where importable and the block size is a multiple of 256")
    ap.add_argument("--memory-limit-gib", type=_positive_float, default=None,
                    help="attention: skip a backend whose predicted peak exceeds this (default: free CUDA memory, "
                         "or half the RAM on cpu)")
    ap.add_argument("--out", default=None, help="write the JSON result here; a bare NAME.json goes to bench_results/")
    return ap


def _output_console(full: bool = False) -> Console:
    """80 columns when not a terminal (the compact table fits); the full table gets the width it needs."""
    console = Console()
    if full:
        return Console(width=max(console.width, 250)) if console.is_terminal else Console(width=250)
    return console if console.is_terminal else Console(width=80)


def name_first(argv: list[str], names) -> list[str]:
    """`--engines m2_batching m3_paged throughput` reads naturally, but `--engines` would swallow the workload:
    move the first of `names` (the workloads, or `prefix`'s scenarios) to the front, where argparse expects it."""
    if argv and argv[0] not in names:
        for i, arg in enumerate(argv):
            if arg in names:
                return [arg, *argv[:i], *argv[i + 1:]]
    return argv


def guarded(run, args: argparse.Namespace) -> dict:
    """`run(args)`, with a BenchError as one red line (exit 2) and Ctrl-C as one line (exit 130)."""
    try:
        return run(args)
    except BenchError as err:
        fail(str(err))
    except KeyboardInterrupt:
        Console(stderr=True).print("[red]interrupted[/red]")
        raise SystemExit(130) from None


def main(argv: list[str] | None = None) -> dict:
    argv = name_first(list(sys.argv[1:] if argv is None else argv), WORKLOADS)
    if argv and argv[0] == "prefix":  # its scenarios have arguments of their own
        from shared.tools.bench.prefix import main as prefix_main

        return prefix_main(argv[1:])
    if argv and argv[0] == "quant":  # M7's: memory, ppl, decode
        from shared.tools.bench.quant import main as quant_main

        return quant_main(argv[1:])
    if argv and argv[0] == "serve":  # a load over HTTP: its own arguments
        from shared.tools.bench.http_load import main as serve_main

        return serve_main(argv[1:])
    return guarded(_main, parser().parse_args(argv))


def _reject(args: argparse.Namespace, names: tuple[str, ...], workload: str) -> None:
    given = [n for n in names if getattr(args, n) not in (None, False)]
    if given:
        flags = ", ".join("--" + n.replace("_", "-") for n in given)
        raise BenchError(f"{flags}: not an option of the {workload} workload (see --help)")


def _write(report: dict, out: str) -> None:
    path = out_path(out)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report, indent=1))
    except OSError as err:
        raise BenchError(f"cannot write {path}: {err.strerror}") from None
    Console(stderr=True, soft_wrap=True).print(f"wrote {path}", highlight=False, markup=False)


def _attention(args: argparse.Namespace) -> dict:
    """The attention workload: one attention layer per backend (shared/tools/bench/attention.py)."""
    _reject(args, ENGINE_OPTIONS + ONLINE_OPTIONS + PREFIX_OPTIONS, "attention")
    if args.result is not None:
        raise BenchError(f"unexpected argument {args.result!r}: only compare takes a file")
    console = _output_console()
    report = run_attention(model=args.model, device=args.device, dtype=args.dtype,
                           contexts=args.contexts or DEFAULT_CONTEXTS, batches=args.batches or DEFAULT_BATCHES,
                           backends=args.backends, block_size=args.block_size or 16, repeat=args.repeat or DEFAULT_REPEAT,
                           memory_limit_gib=args.memory_limit_gib, threads=args.threads or default_threads())
    print_attention(report, console)
    if args.out:
        _write(report, args.out)
    return report


def print_attention(report: dict, console: Console | None = None) -> None:
    console = console or _output_console()
    console.print(f"[bold]setup[/bold] {escape(describe(report['setup']))}", highlight=False)
    for note in report.get("notes", []):
        console.print(f"note: {escape(note)}", highlight=False)
    for table in render_attention(report):
        console.print(table)


def _checked_dtype(args: argparse.Namespace) -> str:
    """Check the model, the dtype and the device before any work; returns the dtype (default by device)."""
    check_model(args.model)
    dtype = args.dtype or ("bfloat16" if args.device.startswith("cuda") else "float32")
    if dtype not in DTYPES:
        raise BenchError(f"unknown dtype {dtype!r}: choose from {', '.join(DTYPES)}")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise BenchError(f"--device {args.device}: CUDA is not available on this machine")
    return dtype


def _online(args: argparse.Namespace) -> dict:
    """The online workload: requests arriving over time, replayed through each engine spec (online.py)."""
    _reject(args, NOT_ONLINE_OPTIONS, "online")
    specs = args.engines or ONLINE_ENGINE_DEFAULT
    check_specs(specs)
    dtype = _checked_dtype(args)
    workload = OnlineWorkload(args.num_requests or 48, args.prompt_len or (32, 128), args.output_len or (64, 192),
                              rate=args.rate or 4.0, num_long=3 if args.long_prompts is None else args.long_prompts,
                              long_len=args.long_len or (2000, 6000), long_output_len=args.long_output_len or 16,
                              behind_s=args.behind_s or 2.0, **_prefix_fields(args))
    need = workload.max_request_len()
    if args.max_model_len and need > args.max_model_len:  # before any work (a spec's own max_model_len: when built)
        raise BenchError(f"the longest request ({need:,} tokens, prefix + prompt + output) does not fit --max-model-len "
                         f"{args.max_model_len:,}: raise it or shorten --long-len / --prompt-len / --output-len / "
                         f"--prefix-len")
    torch.set_num_threads(args.threads or default_threads())
    run = dict(repeat=args.repeat or 1, max_model_len=args.max_model_len, max_num_seqs=args.max_num_seqs)
    setup = online_setup(specs, args.model, args.device, dtype, workload, kv_cache_memory_bytes=args.kv_cache_memory_bytes,
                         **run)
    console = _output_console()
    console.print(f"[bold]setup[/bold] {escape(describe(setup))}", highlight=False)
    model = resolve_bench_model(args.model, dtype)
    try:
        report = run_online(specs, model, args.device, dtype, workload, kv_cache_memory_bytes=setup["kv_cache_memory_bytes"],
                            **run)
    except ValueError as err:  # the engines reject a bad option or a request that does not fit, before any work
        raise BenchError(str(err)) from None
    report["setup"] = {**report["setup"], "model": args.model}  # the name asked for, not the temporary checkpoint
    (_output_console(True) if args.full else console).print(render_online(report, full=args.full))
    if args.out:
        _write(report, args.out)
    return report


def _engine_models(given: list[str] | None, engines: list[str], workload: str) -> dict[str, str]:
    """--engine-model ENGINE=MODEL, repeated -> {engine: model}, each engine one of the run's milestones."""
    if not given:
        return {}
    if workload != "throughput":
        raise BenchError(f"--engine-model applies to the throughput workload, not {workload}")
    out: dict[str, str] = {}
    for item in given:
        name, eq, model = item.partition("=")
        if not eq or not model:
            raise BenchError(f"--engine-model takes ENGINE=MODEL, got {item!r}")
        if name not in engines or name == "hf":
            raise BenchError(f"--engine-model {item!r}: {name!r} is not one of the run's milestone engines ({' '.join(engines)})")
        check_model(model)
        out[name] = model
    return out


def _prefix_fields(args: argparse.Namespace) -> dict:
    """--prefix-len and --num-prefixes as workload fields (their defaults: no prefix, one)."""
    return {"prefix_len": args.prefix_len or 0, "num_prefixes": args.num_prefixes or 1}


def _main(args: argparse.Namespace) -> dict:
    if args.workload == "attention":
        return _attention(args)
    _reject(args, ATTENTION_OPTIONS, args.workload)
    if args.workload == "online":
        if args.result is not None:
            raise BenchError(f"unexpected argument {args.result!r}: only compare takes a file")
        return _online(args)
    _reject(args, ONLINE_OPTIONS, args.workload)
    if args.workload == "compare":
        _reject(args, PREFIX_OPTIONS, "compare")
        path = Path(args.result) if args.result else None
        if path is not None and not path.is_file() and out_path(args.result).is_file():
            path = out_path(args.result)  # `compare run.json` finds what `--out run.json` wrote
        if path is None or not path.is_file():
            raise BenchError(f"compare needs the JSON file of a run (--out of latency, throughput, online, attention "
                             f"or prefix), "
                             f"got {args.result}")
        try:
            report = json.loads(path.read_text())
            if report["setup"]["workload"]["name"] == "attention":  # nothing to set side by side: its tables again
                render_attention(report)
                print_attention(report)
                return report
            if report["setup"]["workload"]["name"].startswith("prefix-"):  # a prefix scenario: its table again
                from shared.tools.bench.prefix import print_report

                print_report(report)
                return report
            tables = [render_compare(report)]
            if report["setup"]["workload"]["name"] == "online":  # its own table first, then each spec over the one before
                tables.insert(0, render_online(report))
            line = describe(report["setup"])
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise BenchError(f"{path} is not a result written by --out ({type(err).__name__}: {err})") from None
        console = _output_console()
        console.print(f"[bold]setup[/bold] {escape(line)}", highlight=False)
        for table in tables:
            console.print(table)
        return report
    if args.result is not None:
        raise BenchError(f"unexpected argument {args.result!r}: only compare takes a file")
    engines = args.engines or ([ENGINES[-1], "hf"] if args.workload == "latency" else ENGINES[-2:])
    check_engines(engines)
    dtype = _checked_dtype(args)
    if args.workload == "latency":
        prompt_len, output_len = args.prompt_len or (128, 128), args.output_len or (64, 64)
        if prompt_len[0] != prompt_len[1] or output_len[0] != output_len[1]:
            raise BenchError("the latency workload takes fixed lengths (N), not ranges")
        _reject(args, PREFIX_OPTIONS, "latency")
        workload = Workload("latency", args.num_requests or 5, prompt_len[0], output_len[0])
    else:
        workload = ThroughputWorkload(args.num_requests or 64, args.prompt_len or (32, 256), args.output_len or (32, 256),
                                      **_prefix_fields(args))
        need = workload.max_request_len()
        if args.max_model_len and need > args.max_model_len:  # before any work
            raise BenchError(f"the longest request ({need:,} tokens, prefix + prompt + output) does not fit "
                             f"--max-model-len {args.max_model_len:,}: raise it or shorten --prompt-len / --output-len "
                             f"/ --prefix-len")
    repeat = args.repeat or (1 if args.workload == "latency" else 3)
    torch.set_num_threads(args.threads or default_threads())
    setup = {"model": args.model, "device": args.device, "dtype": dtype, "threads": torch.get_num_threads(),
             "repeat": repeat, "engines": engines, "machine": machine_info(args.device), "date": time.strftime("%Y-%m-%d"),
             "workload": asdict(workload)}
    options = dict(max_num_seqs=args.max_num_seqs, kv_cache_memory_bytes=args.kv_cache_memory_bytes, block_size=args.block_size)
    engine_models = _engine_models(args.engine_model, engines, args.workload)
    if engine_models:
        setup["engine_models"] = engine_models
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
                                     repeat=repeat, engine_models=engine_models, **options)
    except ValueError as err:  # the engines reject a bad option or a request that does not fit, before any work
        raise BenchError(str(err)) from None
    report = {"setup": setup, "results": results}
    (_output_console(True) if args.full else console).print(render_table(results, setup, full=args.full))
    if args.out:
        _write(report, args.out)
    return report
