"""The online run: requests arrive over time (`OnlineWorkload`) and are replayed in wall-clock time through a
milestone engine's `add_request` / `step`, as a server would see them. Each engine is given as a spec, `name` or
`name:key=value,...` (`m5_chunked:max_num_batched_tokens=256,long_prefill_token_threshold=0`), built and
warmed up once; then the engines replay the workload interleaved A B A B ... Every output token is stamped
when the step that made it returns: TTFT runs from the request's scheduled arrival (a request due mid-step
waits for the step, as in a server), ITL is the gap between two tokens of one request, and the step timeline
(prompt and decode tokens per step) shows what the scheduler did around each long prompt."""

from __future__ import annotations

import itertools
import json
import re
import statistics
import time
from collections import deque
from dataclasses import asdict

import torch

from shared.llm import engine_options
from shared.sampling import SamplingParams
from shared.tools.bench.checks import BenchError
from shared.tools.bench.engines import _build_llm, _sync, cold_start, serve
from shared.tools.bench.machine import machine_info
from shared.tools.bench.progress import Reporter, Task
from shared.tools.bench.results import _pct, add_factors
from shared.tools.bench.throughput import _split_cuda_budget
from shared.tools.bench.workloads import OnlineWorkload
from shared.tools.milestones import ENGINES, llm_class

ONLINE_ENGINES = [e for e in ENGINES if e != "m1_basic"]  # engines with a scheduler and per-step stats
# the figures set against the first engine: True where higher is better
ONLINE_FIGURES = {"ttft_ms_p50": False, "ttft_ms_p99": False, "behind_long_ttft_ms_p50": False, "long_ttft_ms_p50": False,
                  "itl_ms_p50": False, "itl_ms_p99": False, "max_stall_ms": False, "output_tok_per_s": True}


def parse_spec(spec: str) -> tuple[str, dict]:
    """`name` or `name:key=value,key=value` -> (milestone, options); values that look like integers become int,
    True/False bool, the rest stay strings. Checks the name and the keys against the engine's options."""
    name, _, rest = spec.partition(":")
    if name not in ONLINE_ENGINES:
        why = ("has no scheduler to add requests to while it runs" if name == "m1_basic" else
               "is transformers generate, not an engine" if name == "hf" else "is not a milestone engine")
        raise BenchError(f"engine spec {spec!r}: {name!r} {why}; the online workload takes {' '.join(ONLINE_ENGINES)}, "
                         f"as name or name:key=value,key=value")
    options: dict = {}
    for item in rest.split(",") if rest else []:
        key, eq, value = (s.strip() for s in item.partition("="))
        if not eq or not key or not value:
            raise BenchError(f"engine spec {spec!r}: expected key=value, got {item!r}")
        if key in options:
            raise BenchError(f"engine spec {spec!r}: {key} given twice")
        options[key] = (int(value) if re.fullmatch(r"[+-]?\d+", value) else
                        {"True": True, "False": False}.get(value, value))
    allowed = [*engine_options(llm_class(name).engine_class), "max_model_len"]
    unknown = [k for k in options if k not in allowed]
    if unknown:
        raise BenchError(f"engine spec {spec!r}: {name} takes no option {', '.join(unknown)}; it takes {', '.join(allowed)}")
    return name, options


def check_specs(specs: list[str]) -> list[tuple[str, dict]]:
    if not specs:
        raise BenchError("no engines given")
    twice = sorted({s for s in specs if specs.count(s) > 1})
    if twice:
        raise BenchError(f"engine spec {twice[0]!r} given twice: each spec is one row of the table")
    return [parse_spec(s) for s in specs]


def online_setup(specs: list[str], model: str, device: str, dtype: str, workload: OnlineWorkload, repeat: int = 1,
                 max_model_len: int | None = None, kv_cache_memory_bytes: int | None = None,
                 max_num_seqs: int | None = None) -> dict:
    """What the run is, written into its JSON (and said by `describe`): the same on every call before the run."""
    options = dict(kv_cache_memory_bytes=kv_cache_memory_bytes)
    _split_cuda_budget(specs, device, options)  # on CUDA: each engine's share of the free memory, written down
    return {"model": model, "device": device, "dtype": dtype, "threads": torch.get_num_threads(), "repeat": repeat,
            "engines": list(specs), "machine": machine_info(device), "date": time.strftime("%Y-%m-%d"),
            "workload": json.loads(json.dumps(asdict(workload))), "max_model_len": max_model_len,
            "max_num_seqs": max_num_seqs, "kv_cache_memory_bytes": options["kv_cache_memory_bytes"]}


def _warm_up(llm, workload: OnlineWorkload, vocab_size: int) -> None:
    """A short request and a long prompt of the longest length: kernels, allocator and caches warm."""
    g = torch.Generator().manual_seed(workload.seed + 1)
    lengths = [workload.prompt_len[1]] + ([workload.long_len[1]] if workload.num_long else [])
    sp = SamplingParams(temperature=0, max_tokens=2, ignore_eos=True)
    serve(llm, [(torch.randint(16, vocab_size, (n,), generator=g).tolist(), sp) for n in lengths])


def replay(engine, requests: list, device: str, task: Task | None = None) -> tuple[list[dict], dict]:
    """Replay the requests at their arrival times (seconds from the start) through `add_request` / `step`.
    Returns one record per request (arrival, when it was added, every token's time) and the step timeline."""
    engine.stats.reset()  # only this replay's steps
    pending = deque(requests)
    records = {rid: {"id": rid, "long": long, "arrival_s": round(arrival, 6), "added_s": None, "prompt_len": len(ids),
                     "output_len": n, "token_s": []} for rid, arrival, ids, n, long in requests}
    added, done, tokens, idle = [], 0, 0, 0
    _sync(device)
    start = time.perf_counter()
    try:
        while pending or engine.has_unfinished_requests():
            now = time.perf_counter() - start
            while pending and pending[0][1] <= now:
                rid, _, ids, n, _ = pending.popleft()
                engine.add_request(ids, SamplingParams(temperature=0, max_tokens=n, ignore_eos=True), request_id=rid)
                records[rid]["added_s"] = now
                added.append(rid)
            if not engine.has_unfinished_requests():
                time.sleep(max(0.0, pending[0][1] - (time.perf_counter() - start)))
                continue
            steps = engine.stats.steps
            outs = engine.step()
            t = time.perf_counter() - start  # the tokens are Python ints by now: the device has finished the step
            idle = idle + 1 if engine.stats.steps == steps else 0
            if idle > 1000:
                raise BenchError("the engine has unfinished requests but schedules nothing (is the KV cache too small "
                                 "for the longest request?)")
            for out in outs:
                stamps = records[out.request_id]["token_s"]
                new = len(out.outputs[0].token_ids) - len(stamps)
                stamps.extend([t] * new)
                tokens += new
                done += out.finished
            if task is not None:
                task.update(done, tokens)
    except BaseException:  # Ctrl-C or a bad request: leave the engine empty
        for rid in added:
            engine.abort_request(rid)
        raise
    _sync(device)
    steps = list(engine.stats.history)
    timeline = {"start_s": [round(s.time - s.duration - start, 6) for s in steps],
                "duration_s": [round(s.duration, 6) for s in steps],
                "prefill_tokens": [s.num_prefill_tokens for s in steps], "decode_tokens": [s.num_decode_tokens for s in steps],
                "num_running": [s.num_running for s in steps], "num_waiting": [s.num_waiting for s in steps]}
    for r in records.values():
        r["token_s"] = [round(x, 6) for x in r["token_s"]]
        r["added_s"] = round(r["added_s"], 6)
    return list(records.values()), timeline


def replay_metrics(records: list[dict], long_arrivals: list[float], behind_s: float) -> dict:
    """One replay's figures: TTFT (from the scheduled arrival) p50/p99 over every request, the short ones, the long
    ones and the short ones arriving within `behind_s` after a long prompt; ITL p50/p99 over every gap between two
    tokens of a request; the longest gap (stall); output tok/s from the first arrival to the last token."""
    def ms(xs: list[float], q: int) -> float | None:
        return 1e3 * _pct(xs, q) if xs else None

    ttft = {r["id"]: r["token_s"][0] - r["arrival_s"] for r in records if r["token_s"]}
    short = [ttft[r["id"]] for r in records if not r["long"] and r["id"] in ttft]
    long = [ttft[r["id"]] for r in records if r["long"] and r["id"] in ttft]
    behind = [ttft[r["id"]] for r in records if not r["long"] and r["id"] in ttft
              and any(0 <= r["arrival_s"] - t <= behind_s for t in long_arrivals)]
    gaps = [b - a for r in records for a, b in itertools.pairwise(r["token_s"])]
    tokens = sum(len(r["token_s"]) for r in records)
    last = max((r["token_s"][-1] for r in records if r["token_s"]), default=0.0)
    span = last - min(r["arrival_s"] for r in records)
    return {"ttft_ms_p50": ms(list(ttft.values()), 50), "ttft_ms_p99": ms(list(ttft.values()), 99),
            "short_ttft_ms_p50": ms(short, 50), "short_ttft_ms_p99": ms(short, 99),
            "long_ttft_ms_p50": ms(long, 50), "long_ttft_ms_p99": ms(long, 99),
            "behind_long_ttft_ms_p50": ms(behind, 50), "behind_long_requests": len(behind),
            "itl_ms_p50": ms(gaps, 50), "itl_ms_p99": ms(gaps, 99), "max_stall_ms": 1e3 * max(gaps) if gaps else None,
            "output_tokens": tokens, "output_tok_per_s": tokens / span if span > 0 else None, "wall_s": last}


def _median(values: list) -> float | None:
    return None if any(v is None for v in values) else statistics.median(values)


class OnlineRunner:
    """One engine spec, built and warmed up once, replaying the workload once per repetition."""

    def __init__(self, spec: str, name: str, options: dict, model: str, device: str, dtype: str, workload: OnlineWorkload,
                 common: dict, vocab_size: int):
        self.spec, self.name, self.options, self.device = spec, name, options, device
        opts = {**common, **options}
        self.llm = _build_llm(name, model, device, dtype, opts.pop("max_model_len", None), **opts)
        engine = self.llm.engine
        need = workload.max_request_len()
        if need > engine.max_model_len:
            raise BenchError(f"{spec}: the longest request ({need:,} tokens, prompt + output) does not fit max_model_len "
                             f"{engine.max_model_len:,}: raise --max-model-len or shorten --long-len / --prompt-len")
        _warm_up(self.llm, workload, vocab_size)
        self.repetitions: list[dict] = []

    def run(self, requests: list, workload: OnlineWorkload, task: Task | None) -> None:
        cold_start(self.llm.engine)  # M6: every round starts with nothing cached
        records, timeline = replay(self.llm.engine, requests, self.device, task)
        long_arrivals = [round(a, 6) for _, a, _, _, is_long in requests if is_long]
        stats = self.llm.engine.stats
        rep = replay_metrics(records, long_arrivals, workload.behind_s)
        rep.update(steps=stats.steps, prefill_tokens=stats.prefill_tokens, decode_tokens=stats.decode_tokens,
                   preemptions=stats.preemptions, long_arrivals_s=long_arrivals, timeline=timeline, requests=records)
        rep.update({k: v for k, v in stats.summary().items() if k.startswith("prefix_")})  # M6: hit rate, evictions
        self.repetitions.append(rep)
        if task is not None:
            task.finish(max(rep["wall_s"], 1e-9))

    def summary(self) -> dict:
        reps = self.repetitions
        keys = [k for k, v in reps[0].items() if not isinstance(v, (list, dict))]
        config = self.llm.engine.scheduler_config
        s = {"engine": self.spec, "milestone": self.name, "options": self.options,
             "scheduler": asdict(config), "max_model_len": self.llm.engine.max_model_len}
        s.update({k: _median([r[k] for r in reps]) for k in keys})
        s.update(num_repetitions=len(reps), repetitions=reps)
        return s


def run_online(specs: list[str], model: str, device: str, dtype: str, workload: OnlineWorkload, repeat: int = 1,
               reporter: Reporter | None = None, max_model_len: int | None = None, kv_cache_memory_bytes: int | None = None,
               max_num_seqs: int | None = None) -> dict:
    """Every engine spec replays the whole workload in wall-clock time; each is built and warmed up once, then the
    specs run interleaved `repeat` times (A B A B ...). Returns {"setup", "results"}: per spec the median of every
    figure over the repetitions, `factors` (how many times better than the first spec, per figure), and every
    repetition with its per-request token times and step timeline."""
    from shared.loader import resolve_model
    from shared.tokenizer import Tokenizer

    parsed = check_specs(specs)
    setup = online_setup(specs, model, device, dtype, workload, repeat, max_model_len, kv_cache_memory_bytes, max_num_seqs)
    vocab = Tokenizer(resolve_model(model)).vocab_size
    requests = workload.requests(vocab)
    common = dict(max_model_len=max_model_len, max_num_seqs=max_num_seqs, kv_cache_memory_bytes=setup["kv_cache_memory_bytes"])
    runners = [OnlineRunner(spec, name, opts, model, device, dtype, workload, common, vocab)
               for spec, (name, opts) in zip(specs, parsed, strict=True)]
    reporter = reporter or Reporter()
    width = max(len(s) for s in specs)
    with reporter:
        for rep in range(repeat):
            for r in runners:
                label = f"{r.spec:<{width}}" + (f" {rep + 1}/{repeat}" if repeat > 1 else "")
                r.run(requests, workload, reporter.start(label, len(requests)))
    return {"setup": setup, "results": add_factors([r.summary() for r in runners], ONLINE_FIGURES)}


def summary_only(report: dict) -> dict:
    """The report without per-request token times and step timelines (megabytes for a long run): what is kept
    under docs/results. Every summary figure, the setup and each repetition's figures stay."""
    slim = {**report, "results": []}
    for result in report["results"]:
        reps = [{k: v for k, v in rep.items() if k not in ("requests", "timeline")} for rep in result.get("repetitions", [])]
        slim["results"].append({**result, "repetitions": reps})
    return slim
