"""M6's prefix cache, measured: `python -m shared.tools.bench prefix ttft|multiturn|kv-sweep ...`.

Three scenarios, each a table, a JSON (`--out`) and a plot (plots.py):

- `ttft`: the time to first token of a prompt whose every block but the last is cached (the same prompt ran
  just before), against the same prompt uncached: what a cache hit saves, at each length of `--lengths`. The
  engines are specs (`m6_prefix`, `m6_prefix:enable_prefix_caching=False`, `m5_chunked`, ...), interleaved
  round by round; every round starts from an empty cache (`reset_prefix_cache`) and caches the prompt again.
- `multiturn`: chats in a closed loop. Each turn every conversation's prompt (all earlier turns, their answers
  and a new user message) is submitted at once; per turn the hit rate of the admitted prompts, TTFT p50 and
  the turn's wall time.
- `kv-sweep`: the hit rate (and throughput, TTFT) against the KV memory, for the scheduling policies fcfs and
  lpm (longest prefix match): requests sharing a few long prefixes, all at once, at each size of `--kv-blocks`;
  and one row with caching off at the largest size, the baseline.

From Python: `run_prefix_ttft`, `run_multiturn` and `run_kv_sweep` return what `--out` writes."""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import asdict

import torch
from rich.console import Console
from rich.markup import escape

from shared.config import DTYPES
from shared.sampling import SamplingParams
from shared.tools.bench.checks import BenchError
from shared.tools.bench.engines import _build_llm, _sync, cold_start, resolve_bench_model, serve
from shared.tools.bench.machine import default_threads, machine_info
from shared.tools.bench.online import check_specs
from shared.tools.bench.progress import Reporter, Task
from shared.tools.bench.results import _pct
from shared.tools.bench.tables import describe, render_kv_sweep, render_multiturn, render_prefix_ttft
from shared.tools.bench.throughput import _split_cuda_budget
from shared.tools.bench.workloads import ThroughputWorkload

SCENARIOS = ("ttft", "multiturn", "kv-sweep")
DEFAULT_SPECS = ["m6_prefix", "m6_prefix:enable_prefix_caching=False"]
DEFAULT_LENGTHS = [1024, 4096]
DEFAULT_KV_BLOCKS = [96, 192, 384, 768, 1536]
DEFAULT_POLICIES = ["fcfs", "lpm"]
PREFIX_MILESTONE = "m6_prefix"  # the engine kv-sweep builds


# ------------------------------------------------------------------------------------------ helpers


def _specs(specs: list[str]) -> list[tuple[str, dict]]:
    """`online.check_specs`, its message naming this workload."""
    try:
        return check_specs(specs)
    except BenchError as err:
        raise BenchError(str(err).replace("the online workload takes", "prefix takes")) from None


def _caches(llm) -> bool:
    """Does this engine cache prefixes (m6 with enable_prefix_caching on)?"""
    return bool(getattr(llm.engine.stats, "prefix_caching", False))


def _random_ids(g: torch.Generator, n: int, vocab_size: int) -> list[int]:
    return torch.randint(16, vocab_size, (n,), generator=g).tolist()  # the first 16 ids: special tokens


def _vocab_size(model: str) -> int:
    from shared.loader import resolve_model
    from shared.tokenizer import Tokenizer

    return Tokenizer(resolve_model(model)).vocab_size


def _check_context(model: str, need: int, what: str) -> None:
    """Before any work: `need` tokens (prompt + output of the longest request) must fit the model's context."""
    from shared.config import ModelConfig
    from shared.loader import resolve_model

    limit = ModelConfig.from_dir(resolve_model(model)).max_position_embeddings
    if need > limit:
        raise BenchError(f"{what} ({need:,} tokens with its output) exceeds the model's context, max_position_embeddings "
                         f"{limit:,}: shorten it")


def _setup(name: str, specs: list[str], model: str, device: str, dtype: str, repeat: int, workload: dict, **extra) -> dict:
    return {"model": model, "device": device, "dtype": dtype, "threads": torch.get_num_threads(), "repeat": repeat,
            "engines": list(specs), "machine": machine_info(device), "date": time.strftime("%Y-%m-%d"),
            "workload": {"name": name, **workload}, **extra}


def _build(spec: str, name: str, options: dict, model: str, device: str, dtype: str, common: dict):
    """A milestone LLM from a spec: the common options, then the spec's own over them."""
    opts = {**{k: v for k, v in common.items() if v is not None}, **options}
    try:
        return _build_llm(name, model, device, dtype, opts.pop("max_model_len", None), **opts)
    except ValueError as err:
        raise BenchError(f"{spec}: {err}") from None


def _warm_up(llm, vocab_size: int, block_size: int) -> None:
    """A short prompt, then the same prompt again (a cache hit where the engine caches): kernels and allocator
    warm on both paths; the cache is emptied after."""
    g = torch.Generator().manual_seed(12345)
    ids = _random_ids(g, max(1, min(4 * block_size, llm.engine.max_model_len - 3)), vocab_size)
    sp = SamplingParams(temperature=0, max_tokens=2, ignore_eos=True)
    serve(llm, [(ids, sp)])
    serve(llm, [(ids, sp)])
    cold_start(llm.engine)


def _median(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def _ms(xs: list[float], q: int) -> float | None:
    return 1e3 * _pct(xs, q) if xs else None


class _Offset:
    """A Task seen by `serve` as if it started at (done, tokens): one bar across several `serve` calls."""

    def __init__(self, task: Task, done: int, tokens: int) -> None:
        self.task, self.done, self.tokens = task, done, tokens

    def update(self, done: int, tokens: int) -> None:
        self.task.update(self.done + done, self.tokens + tokens)


# ---------------------------------------------------------------------------------------------- ttft


def time_to_first_token(engine, prompt: list[int], device: str) -> float:
    """Seconds from `add_request` to the return of the step that produced the prompt's first token (max_tokens=1,
    greedy); the engine must be idle before, and is again after."""
    sp = SamplingParams(temperature=0, max_tokens=1, ignore_eos=True)
    _sync(device)
    t0 = time.perf_counter()
    rid = engine.add_request(prompt, sp)
    try:
        while True:
            outs = engine.step()
            if any(o.request_id == rid and o.outputs[0].token_ids for o in outs):
                break
            if not engine.has_unfinished_requests():
                raise BenchError("the request finished without a token")
        _sync(device)
        elapsed = time.perf_counter() - t0
    except BaseException:
        engine.abort_request(rid)
        raise
    while engine.has_unfinished_requests():  # max_tokens=1: already done
        engine.step()
    return elapsed


def run_prefix_ttft(specs: list[str], model: str, device: str, dtype: str, lengths: list[int], repeat: int = 5,
                    block_size: int = 16, kv_cache_memory_bytes: int | None = None, seed: int = 0,
                    reporter: Reporter | None = None, announce=None) -> dict:
    """For each length L: a prompt P of L random ids is run (and cached, where the engine caches), then the measured
    request Q = P[:L - block_size] + block_size new ids, one output token, is timed from `add_request` to the step
    that returns its token. Every round, every engine: an empty cache, P again, then Q. Rows: length x engine, with
    the median TTFT over the rounds, its min-max, `speedup` (the reference's TTFT over this engine's in the same
    round, median and min-max; the reference is the first spec that does not cache) and Q's hit and computed
    tokens (from the engine's stats). `announce(setup)` is called before any engine is built."""
    parsed = _specs(specs)
    lengths = list(lengths)
    if not lengths:
        raise BenchError("no lengths given")
    if len(set(lengths)) != len(lengths):
        raise BenchError(f"--lengths lists a length twice: {' '.join(map(str, lengths))}")
    short = [n for n in lengths if n < 2 * block_size]
    if short:
        raise BenchError(f"--lengths {short[0]}: a length must be at least two blocks ({2 * block_size} tokens), since the "
                         f"measured prompt is the cached one with its last block replaced")
    options = dict(kv_cache_memory_bytes=kv_cache_memory_bytes)
    _split_cuda_budget(specs, device, options)
    max_model_len = max(lengths) + 1
    _check_context(model, max_model_len, f"--lengths {max(lengths)}")
    workload = {"lengths": lengths, "block_size": block_size, "max_tokens": 1, "seed": seed}
    setup = _setup("prefix-ttft", specs, model, device, dtype, repeat, workload, block_size=block_size,
                   max_model_len=max_model_len, kv_cache_memory_bytes=options["kv_cache_memory_bytes"])
    if announce is not None:
        announce(setup)
    vocab = _vocab_size(model)
    g = torch.Generator().manual_seed(seed)
    cases = {}
    for n in lengths:
        cached = _random_ids(g, n, vocab)
        cases[n] = (cached, cached[:n - block_size] + _random_ids(g, block_size, vocab))
    common = dict(block_size=block_size, kv_cache_memory_bytes=options["kv_cache_memory_bytes"], max_model_len=max_model_len)
    llms = [_build(spec, name, opts, model, device, dtype, common) for spec, (name, opts) in zip(specs, parsed, strict=True)]
    for llm in llms:
        _warm_up(llm, vocab, block_size)
    fill = SamplingParams(temperature=0, max_tokens=1, ignore_eos=True)
    times: dict[tuple[int, str], list[float]] = {(n, s): [] for n in lengths for s in specs}
    seen: dict[tuple[int, str], dict] = {}
    reporter = reporter or Reporter()
    width = max(len(s) for s in specs)
    with reporter:
        for rep in range(repeat):
            for spec, llm in zip(specs, llms, strict=True):
                label = f"{spec:<{width}}" + (f" {rep + 1}/{repeat}" if repeat > 1 else "")
                task, spent = reporter.start(label, len(lengths)), 0.0
                engine = llm.engine
                for i, n in enumerate(lengths):
                    cached, measured = cases[n]
                    if _caches(llm):
                        engine.reset_prefix_cache()  # every round starts the same
                        serve(llm, [(cached, fill)])
                    engine.stats.reset()
                    elapsed = time_to_first_token(engine, measured, device)
                    stats = engine.stats
                    times[(n, spec)].append(elapsed)
                    seen[(n, spec)] = {"hit_tokens": stats.prefix_hit_tokens, "computed_tokens": stats.prefill_tokens,
                                       "steps": stats.steps}
                    spent += elapsed
                    task.update(i + 1, i + 1)
                task.finish(max(spent, 1e-9))
    reference = next((s for s, llm in zip(specs, llms, strict=True) if not _caches(llm)), specs[0])
    results = []
    for n in lengths:
        ref = times[(n, reference)]
        for spec, llm, (name, opts) in zip(specs, llms, parsed, strict=True):
            mine = times[(n, spec)]
            speedups = [a / b for a, b in zip(ref, mine, strict=True)]
            results.append({
                "length": n, "engine": spec, "milestone": name, "options": opts, "prefix_caching": _caches(llm),
                "ttft_ms": 1e3 * statistics.median(mine), "ttft_ms_min": 1e3 * min(mine), "ttft_ms_max": 1e3 * max(mine),
                "ttft_ms_rounds": [1e3 * t for t in mine], **seen[(n, spec)], "reference": reference,
                "speedup": statistics.median(speedups), "speedup_min": min(speedups), "speedup_max": max(speedups)})
    setup["reference"] = reference
    return {"setup": setup, "results": results}


# ----------------------------------------------------------------------------------------- multiturn


def run_multiturn(specs: list[str], model: str, device: str, dtype: str, conversations: int = 8, turns: int = 6,
                  first_len: int = 256, user_len: int = 64, output_len: int = 64, repeat: int = 1, block_size: int = 16,
                  kv_cache_memory_bytes: int | None = None, max_num_seqs: int | None = None, seed: int = 0,
                  reporter: Reporter | None = None, announce=None) -> dict:
    """`conversations` chats of `turns` turns, closed loop: turn 1's prompt is `first_len` random ids; each turn
    every conversation's prompt is submitted at once and answered with `output_len` greedy tokens (EOS ignored);
    the next prompt is the last one + its answer + `user_len` new random ids (the same for every engine). Engines
    interleaved turn by turn; each round starts from an empty cache. Per engine and turn: the mean prompt length,
    the hit rate of the turn's admissions (hit tokens over queried tokens of the engine's stats during the turn),
    TTFT p50/p99 (from submission), the prompt tokens computed and the turn's wall time; medians over the rounds.
    `ttft_speedup`: the reference's TTFT p50 over this engine's (the reference: the first spec that does not cache).
    `announce(setup)` is called before any engine is built."""
    parsed = _specs(specs)
    for what, n in (("conversations", conversations), ("turns", turns), ("first_len", first_len),
                    ("user_len", user_len), ("output_len", output_len)):
        if n < 1:
            raise BenchError(f"{what} must be >= 1, got {n}")
    options = dict(kv_cache_memory_bytes=kv_cache_memory_bytes)
    _split_cuda_budget(specs, device, options)
    max_model_len = first_len + (turns - 1) * (output_len + user_len) + output_len
    _check_context(model, max_model_len, "the last turn")
    workload = {"conversations": conversations, "turns": turns, "first_len": first_len, "user_len": user_len,
                "output_len": output_len, "seed": seed}
    setup = _setup("prefix-multiturn", specs, model, device, dtype, repeat, workload, block_size=block_size,
                   max_model_len=max_model_len, max_num_seqs=max_num_seqs,
                   kv_cache_memory_bytes=options["kv_cache_memory_bytes"])
    if announce is not None:
        announce(setup)
    vocab = _vocab_size(model)
    g = torch.Generator().manual_seed(seed)
    firsts = [_random_ids(g, first_len, vocab) for _ in range(conversations)]
    users = [[_random_ids(g, user_len, vocab) for _ in range(conversations)] for _ in range(turns - 1)]
    common = dict(block_size=block_size, kv_cache_memory_bytes=options["kv_cache_memory_bytes"],
                  max_model_len=max_model_len, max_num_seqs=max_num_seqs)
    llms = [_build(spec, name, opts, model, device, dtype, common) for spec, (name, opts) in zip(specs, parsed, strict=True)]
    for llm in llms:
        need = max_model_len
        if need > llm.engine.max_model_len:
            raise BenchError(f"the last turn ({need:,} tokens, prompt + answer) does not fit max_model_len "
                             f"{llm.engine.max_model_len:,}: fewer turns or shorter lengths")
        _warm_up(llm, vocab, block_size)
    sp = SamplingParams(temperature=0, max_tokens=output_len, ignore_eos=True)
    rounds: dict[str, list[list[dict]]] = {s: [] for s in specs}
    reporter = reporter or Reporter()
    width = max(len(s) for s in specs)
    with reporter:
        for rep in range(repeat):
            prompts, tasks, walls, done = {}, {}, dict.fromkeys(specs, 0.0), dict.fromkeys(specs, (0, 0))
            for spec, llm in zip(specs, llms, strict=True):
                cold_start(llm.engine)
                llm.engine.stats.reset()
                prompts[spec] = [list(p) for p in firsts]
                rounds[spec].append([])
                label = f"{spec:<{width}}" + (f" {rep + 1}/{repeat}" if repeat > 1 else "")
                tasks[spec] = reporter.start(label, conversations * turns)
            for turn in range(turns):
                for spec, llm in zip(specs, llms, strict=True):
                    stats = llm.engine.stats
                    before = (stats.prefix_hit_tokens, stats.prefix_queried_tokens, stats.prefill_tokens, stats.preemptions)
                    _sync(device)
                    t0 = time.perf_counter()
                    outs = serve(llm, [(p, sp) for p in prompts[spec]], _Offset(tasks[spec], *done[spec]))
                    _sync(device)
                    wall = time.perf_counter() - t0
                    hits, queried = stats.prefix_hit_tokens - before[0], stats.prefix_queried_tokens - before[1]
                    ttft = [o.metrics.ttft for o in outs if o.metrics.ttft is not None]
                    tokens = sum(o.metrics.num_output_tokens for o in outs)
                    rounds[spec][-1].append({
                        "turn": turn + 1, "prompt_len_mean": statistics.fmean(len(p) for p in prompts[spec]),
                        "hit_rate": hits / queried if queried else 0.0, "hit_tokens": hits, "queried_tokens": queried,
                        "computed_prompt_tokens": stats.prefill_tokens - before[2], "preemptions": stats.preemptions - before[3],
                        "ttft_ms_p50": _ms(ttft, 50), "ttft_ms_p99": _ms(ttft, 99), "ttft_s": ttft,
                        "wall_s": wall, "output_tokens": tokens})
                    walls[spec] += wall
                    done[spec] = (done[spec][0] + len(outs), done[spec][1] + tokens)
                    if turn + 1 < turns:
                        prompts[spec] = [p + o.outputs[0].token_ids + u
                                         for p, o, u in zip(prompts[spec], outs, users[turn], strict=True)]
            for spec in specs:
                tasks[spec].finish(max(walls[spec], 1e-9))
    results = []
    for spec, llm, (name, opts) in zip(specs, llms, parsed, strict=True):
        reps = rounds[spec]
        per_turn = []
        for t in range(turns):
            rows = [r[t] for r in reps]
            per_turn.append({"turn": t + 1, **{k: _median([row[k] for row in rows])
                                               for k in rows[0] if k not in ("turn", "ttft_s")}})
        totals = []
        for r in reps:
            hits, queried = sum(x["hit_tokens"] for x in r), sum(x["queried_tokens"] for x in r)
            ttft = [t for x in r for t in x["ttft_s"]]
            totals.append({"hit_rate": hits / queried if queried else 0.0, "ttft_ms_p50": _ms(ttft, 50),
                           "ttft_ms_p99": _ms(ttft, 99), "wall_s": sum(x["wall_s"] for x in r),
                           "computed_prompt_tokens": sum(x["computed_prompt_tokens"] for x in r),
                           "output_tokens": sum(x["output_tokens"] for x in r)})
        summary = {k: _median([t[k] for t in totals]) for k in totals[0]}
        summary["output_tok_per_s"] = summary["output_tokens"] / summary["wall_s"] if summary["wall_s"] else None
        results.append({"engine": spec, "milestone": name, "options": opts, "prefix_caching": _caches(llm),
                        **summary, "turns": per_turn, "rounds": reps, "num_repetitions": len(reps)})
    reference = next((r["engine"] for r in results if not r["prefix_caching"]), specs[0])
    ref = next(r for r in results if r["engine"] == reference)
    for r in results:  # the reference's TTFT p50 over mine, turn by turn (above 1: sooner than the reference)
        r["reference"] = reference
        for mine, theirs in zip(r["turns"], ref["turns"], strict=True):
            a, b = theirs["ttft_ms_p50"], mine["ttft_ms_p50"]
            mine["ttft_speedup"] = a / b if a and b else None
        a, b = ref["ttft_ms_p50"], r["ttft_ms_p50"]
        r["ttft_speedup"] = a / b if a and b else None
    setup["reference"] = reference
    return {"setup": setup, "results": results}


# ------------------------------------------------------------------------------------------ kv-sweep


def kv_sweep_workload(num_requests: int = 128, num_prefixes: int = 8, prefix_len: int = 1024,
                      prompt_len: tuple[int, int] = (32, 128), output_len: tuple[int, int] = (32, 32),
                      seed: int = 0) -> ThroughputWorkload:
    """The kv-sweep's requests: a throughput workload whose prompts each start with one of `num_prefixes` shared
    prefixes (drawn at random, seeded)."""
    return ThroughputWorkload(num_requests, prompt_len, output_len, prefix_len=prefix_len, num_prefixes=num_prefixes,
                              seed=seed)


def kv_sweep_min_blocks(workload: ThroughputWorkload, block_size: int) -> tuple[int, int]:
    """(max_model_len, blocks): the longest request rounded up to whole blocks, and the blocks that takes (the
    fewest an engine can be built with)."""
    blocks = -(-workload.max_request_len() // block_size)
    return blocks * block_size, blocks


def run_kv_sweep(model: str, device: str, dtype: str, kv_blocks: list[int], policies: list[str] = DEFAULT_POLICIES,
                 workload: ThroughputWorkload | None = None, block_size: int = 16, repeat: int = 1,
                 max_num_seqs: int | None = None, baseline: bool = True, reporter: Reporter | None = None,
                 announce=None) -> dict:
    """M6 at each KV size of `kv_blocks` (blocks of `block_size`) and each scheduling policy, serving `workload`
    (default: `kv_sweep_workload()`), every request at once; plus, with `baseline`, caching off at the largest
    size. One engine is alive at a time: each round builds each configuration in turn, warms it up and serves the
    workload once (rounds interleave the configurations). Per configuration: hit rate, evictions, preemptions,
    output tok/s, TTFT p50/p99 and the prompt tokens computed, medians over the rounds; an lpm row also gets
    `vs_fcfs`, its tok/s and TTFT p50 against fcfs's at the same size (above 1: lpm is better). `announce(setup)`
    is called before any engine is built."""
    from shared.config import ModelConfig
    from shared.loader import resolve_model

    workload = workload or kv_sweep_workload()
    policies = list(policies)
    bad = [p for p in policies if p not in DEFAULT_POLICIES]
    if bad or not policies:
        raise BenchError(f"unknown policy {bad[0]!r}: choose from {' '.join(DEFAULT_POLICIES)}" if bad else "no policies given")
    if len(set(policies)) != len(policies):
        raise BenchError(f"--policies lists a policy twice: {' '.join(policies)}")
    if not kv_blocks:
        raise BenchError("no KV sizes given")
    if len(set(kv_blocks)) != len(kv_blocks):
        raise BenchError(f"--kv-blocks lists a size twice: {' '.join(map(str, kv_blocks))}")
    _check_context(model, workload.max_request_len(), "the longest request")
    sizes = sorted(kv_blocks)
    max_model_len, least = kv_sweep_min_blocks(workload, block_size)
    if sizes[0] < least:
        raise BenchError(f"--kv-blocks {sizes[0]}: the longest request ({workload.max_request_len():,} tokens: prefix + "
                         f"prompt + output) takes {least} blocks of {block_size} tokens; give every size at least {least}")
    per_token = ModelConfig.from_dir(resolve_model(model)).kv_bytes_per_token(DTYPES[dtype])
    configs = [(b, p, True) for b in sizes for p in policies] + ([(sizes[-1], "fcfs", False)] if baseline else [])
    wl = json.loads(json.dumps(asdict(workload)))  # as the JSON will hold it (lists, not tuples)
    setup = _setup("prefix-kv-sweep", [PREFIX_MILESTONE], model, device, dtype, repeat,
                   {**wl, "name": "prefix-kv-sweep", "kv_blocks": sizes, "policies": policies, "baseline": baseline},
                   block_size=block_size, max_model_len=max_model_len, max_num_seqs=max_num_seqs,
                   kv_bytes_per_token=per_token)
    if announce is not None:
        announce(setup)
    vocab = _vocab_size(model)
    requests = workload.requests(vocab)
    params = [(ids, SamplingParams(temperature=0, max_tokens=o, ignore_eos=True)) for ids, o in requests]
    runs: dict[tuple, list[dict]] = {c: [] for c in configs}
    reporter = reporter or Reporter()
    with reporter:
        for rep in range(repeat):
            for blocks, policy, caching in configs:
                label = (f"{blocks:>5} blocks {policy if caching else 'off':<4}" + (f" {rep + 1}/{repeat}" if repeat > 1 else ""))
                options = dict(enable_prefix_caching=caching, scheduling_policy=policy)
                common = dict(block_size=block_size, kv_cache_memory_bytes=blocks * block_size * per_token,
                              max_model_len=max_model_len, max_num_seqs=max_num_seqs)
                llm = _build(PREFIX_MILESTONE, PREFIX_MILESTONE, options, model, device, dtype, common)
                assert llm.engine.cache.num_blocks == blocks, (llm.engine.cache.num_blocks, blocks)
                _warm_up(llm, vocab, block_size)
                stats = llm.engine.stats
                stats.reset()
                task = reporter.start(label, len(params))
                _sync(device)
                t0 = time.perf_counter()
                outs = serve(llm, params, task)
                _sync(device)
                wall = time.perf_counter() - t0
                task.finish(wall)
                tokens = sum(o.metrics.num_output_tokens for o in outs)
                ttft = [o.metrics.ttft for o in outs if o.metrics.ttft is not None]
                runs[(blocks, policy, caching)].append({
                    "hit_rate": stats.prefix_hit_rate, "hit_tokens": stats.prefix_hit_tokens,
                    "queried_tokens": stats.prefix_queried_tokens, "evictions": stats.prefix_evictions,
                    "preemptions": stats.preemptions, "computed_prompt_tokens": stats.prefill_tokens,
                    "output_tokens": tokens, "wall_s": wall, "output_tok_per_s": tokens / wall,
                    "ttft_ms_p50": _ms(ttft, 50), "ttft_ms_p99": _ms(ttft, 99), "steps": stats.steps,
                    "max_running": stats.max_running,
                    "mean_running": stats.sum_running / stats.busy_steps if stats.busy_steps else 0.0})
                del llm, outs
    results = []
    for blocks, policy, caching in configs:
        reps = runs[(blocks, policy, caching)]
        row = {"kv_blocks": blocks, "kv_tokens": blocks * block_size, "kv_mib": blocks * block_size * per_token / 2**20,
               "policy": policy, "prefix_caching": caching,
               "engine": f"{PREFIX_MILESTONE}:scheduling_policy={policy}" if caching else
                         f"{PREFIX_MILESTONE}:enable_prefix_caching=False",
               **{k: _median([r[k] for r in reps]) for k in reps[0]}, "num_repetitions": len(reps), "repetitions": reps}
        results.append(row)
    for row in results:
        fcfs = next((r for r in results if r["kv_blocks"] == row["kv_blocks"] and r["policy"] == "fcfs"
                     and r["prefix_caching"]), None)
        row["vs_fcfs"] = None
        if row["policy"] == "lpm" and fcfs is not None:
            row["vs_fcfs"] = {"output_tok_per_s": row["output_tok_per_s"] / fcfs["output_tok_per_s"],
                              "ttft_ms_p50": (fcfs["ttft_ms_p50"] / row["ttft_ms_p50"]
                                              if fcfs["ttft_ms_p50"] and row["ttft_ms_p50"] else None)}
    return {"setup": setup, "results": results}


# ----------------------------------------------------------------------------------------- the CLI


def print_report(report: dict, console: Console | None = None, setup_line: bool = True) -> None:
    """The setup line and the scenario's table (what `prefix ...` prints, and `compare` of its JSON)."""
    from shared.tools.bench.cli import _output_console

    console = console or _output_console()
    if setup_line:
        console.print(f"[bold]setup[/bold] {escape(describe(report['setup']))}", highlight=False)
    name = report["setup"]["workload"]["name"]
    render = {"prefix-ttft": render_prefix_ttft, "prefix-multiturn": render_multiturn,
              "prefix-kv-sweep": render_kv_sweep}[name]
    console.print(render(report))


def parser() -> argparse.ArgumentParser:
    from shared.tools.bench.cli import _int_at_least, _length_range, _Parser, _positive

    ap = _Parser(prog="python -m shared.tools.bench prefix", formatter_class=argparse.RawDescriptionHelpFormatter,
                 description="M6's prefix cache: three scenarios, each a table and (--out) a JSON; a mistake in the "
                             "arguments is one red line, exit status 2.",
                 epilog="examples:\n"
                        "  python -m shared.tools.bench prefix ttft --lengths 1024 4096 --repeat 5 --out ttft.json\n"
                        "  python -m shared.tools.bench prefix ttft --engines m6_prefix m6_prefix:enable_prefix_caching="
                        "False m5_chunked\n"
                        "  python -m shared.tools.bench prefix multiturn --conversations 8 --turns 6 --out chat.json\n"
                        "  python -m shared.tools.bench prefix kv-sweep --kv-blocks 96 192 384 768 1536 --policies fcfs "
                        "lpm --out sweep.json\n"
                        "  python -m shared.tools.bench compare bench_results/sweep.json   # the table of a saved run")
    sub = ap.add_subparsers(dest="scenario", required=True, metavar="SCENARIO", parser_class=_Parser,
                            title="scenarios (python -m shared.tools.bench prefix SCENARIO --help)")
    common = _Parser(add_help=False)
    common.add_argument("--model", default="tiny-qwen3", help="bundled name, HF directory, hub id, or random:<preset>")
    common.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    common.add_argument("--dtype", default=None, help="default: float32 on cpu, bfloat16 on cuda")
    common.add_argument("--threads", type=_positive, default=None,
                        help=f"torch CPU threads (default: half the cores, here {default_threads()})")
    common.add_argument("--block-size", type=_positive, default=16, help="positions per KV block (default 16)")
    common.add_argument("--out", default=None, help="write the JSON result here; a bare NAME.json goes to bench_results/")
    engines = _Parser(add_help=False)
    engines.add_argument("--engines", nargs="+", default=None,
                         help=f"engine specs, name or name:key=value,... (default: {' '.join(DEFAULT_SPECS)}; "
                              "m5_chunked and other milestones from m2 on can join, as the uncached reference)")
    engines.add_argument("--kv-cache-memory-bytes", type=_positive, default=None, help="the KV budget of every engine")

    t = sub.add_parser("ttft", parents=[common, engines],
                       help="TTFT of a prompt cached but for its last block, against the same prompt uncached",
                       description="Per length: a prompt P is run (and cached), then Q = P minus its last block plus a "
                                   "new block is timed to its first token; each round starts from an empty cache.")
    t.add_argument("--lengths", type=_positive, nargs="+", default=None,
                   help=f"prompt lengths (default {' '.join(map(str, DEFAULT_LENGTHS))})")
    t.add_argument("--repeat", type=_positive, default=5, help="rounds, engines interleaved (default 5)")

    m = sub.add_parser("multiturn", parents=[common, engines],
                       help="chats in a closed loop: per turn hit rate, TTFT p50 and wall time",
                       description="C conversations of T turns; each turn every conversation's prompt (the previous "
                                   "prompt + its answer + a new user message) is submitted at once.")
    m.add_argument("--conversations", type=_positive, default=8, help="conversations (default 8)")
    m.add_argument("--turns", type=_positive, default=6, help="turns per conversation (default 6)")
    m.add_argument("--first-len", type=_positive, default=256, help="tokens of the first prompt (default 256)")
    m.add_argument("--user-len", type=_positive, default=64, help="new user tokens each later turn (default 64)")
    m.add_argument("--output-len", type=_positive, default=64, help="tokens of each answer (default 64)")
    m.add_argument("--max-num-seqs", type=_positive, default=None, help="the engines' batch limit")
    m.add_argument("--repeat", type=_positive, default=1, help="rounds, each from an empty cache (default 1)")

    k = sub.add_parser("kv-sweep", parents=[common],
                       help="hit rate, throughput and TTFT against the KV memory, fcfs against lpm (the "
                            "longest-prefix-match policy), and caching off at the largest size",
                       description="Requests sharing a few long prefixes, all at once, through m6_prefix at each KV "
                                   "size and scheduling policy (fcfs, lpm: the LPM-vs-FCFS comparison), plus caching "
                                   "off at the largest size.")
    k.add_argument("--kv-blocks", type=_positive, nargs="+", default=None,
                   help=f"KV sizes in blocks (default {' '.join(map(str, DEFAULT_KV_BLOCKS))}); each at least the "
                        "blocks of the longest request")
    k.add_argument("--policies", nargs="+", default=None, help=f"from fcfs lpm (default {' '.join(DEFAULT_POLICIES)})")
    k.add_argument("--num-prefixes", type=_positive, default=8, help="distinct shared prefixes (default 8)")
    k.add_argument("--prefix-len", type=_int_at_least(0, "an integer >= 0"), default=1024,
                   help="tokens of each prefix (default 1024)")
    k.add_argument("--num-requests", type=_positive, default=128, help="requests (default 128)")
    k.add_argument("--prompt-len", type=_length_range, default=(32, 128),
                   help="tokens after the prefix, N or LO:HI (default 32:128)")
    k.add_argument("--output-len", type=_length_range, default=(32, 32), help="output tokens, N or LO:HI (default 32)")
    k.add_argument("--max-num-seqs", type=_positive, default=None, help="the engine's batch limit")
    k.add_argument("--no-baseline", action="store_true", help="leave out the caching-off row")
    k.add_argument("--repeat", type=_positive, default=1, help="rounds, configurations interleaved (default 1)")
    return ap


def main(argv: list[str] | None = None) -> dict:
    """`python -m shared.tools.bench prefix SCENARIO ...` (cli.main hands `prefix ...` here)."""
    from shared.tools.bench.cli import guarded, name_first

    return guarded(_main, parser().parse_args(name_first(list(sys.argv[2:] if argv is None else argv), SCENARIOS)))


def _main(args: argparse.Namespace) -> dict:
    from shared.tools.bench.cli import _checked_dtype, _write

    specs = getattr(args, "engines", None) or DEFAULT_SPECS
    if args.scenario != "kv-sweep":
        _specs(specs)
    dtype = _checked_dtype(args)
    torch.set_num_threads(args.threads or default_threads())
    from shared.tools.bench.cli import _output_console

    console = _output_console()

    def announce(setup: dict) -> None:
        setup = {**setup, "model": args.model}
        console.print(f"[bold]setup[/bold] {escape(describe(setup))}", highlight=False)

    model = resolve_bench_model(args.model, dtype)
    run = dict(model=model, device=args.device, dtype=dtype, block_size=args.block_size, repeat=args.repeat,
               announce=announce)
    try:
        if args.scenario == "ttft":
            report = run_prefix_ttft(specs, lengths=args.lengths or DEFAULT_LENGTHS,
                                     kv_cache_memory_bytes=args.kv_cache_memory_bytes, **run)
        elif args.scenario == "multiturn":
            report = run_multiturn(specs, conversations=args.conversations, turns=args.turns, first_len=args.first_len,
                                   user_len=args.user_len, output_len=args.output_len,
                                   kv_cache_memory_bytes=args.kv_cache_memory_bytes, max_num_seqs=args.max_num_seqs, **run)
        else:
            workload = kv_sweep_workload(args.num_requests, args.num_prefixes, args.prefix_len, args.prompt_len,
                                         args.output_len)
            report = run_kv_sweep(kv_blocks=args.kv_blocks or DEFAULT_KV_BLOCKS, policies=args.policies or DEFAULT_POLICIES,
                                  workload=workload, max_num_seqs=args.max_num_seqs, baseline=not args.no_baseline, **run)
    except BenchError:
        raise
    except ValueError as err:  # an engine rejects an option or a request before any work
        raise BenchError(str(err)) from None
    report["setup"] = {**report["setup"], "model": args.model}  # the name asked for, not the temporary checkpoint
    print_report(report, console, setup_line=False)
    if args.out:
        _write(report, args.out)
    return report
