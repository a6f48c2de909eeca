"""A serving load benchmark, like vLLM's benchmark_serving: `python -m shared.tools.bench serve ...` sends requests
to an OpenAI-compatible server over HTTP, as clients would, and measures what they see.

    python -m shared.tools.bench serve --launch m6_prefix --launch m5_chunked:max_num_seqs=64 \\
        --rate 4 --num-requests 64 --input-len 32:256 --output-len 32:128 --out serve.json
    python -m shared.tools.bench serve --url http://127.0.0.1:8000 --rate inf --max-concurrency 16

The server is either one already running (`--url`), or one per `--launch SPEC` (`name` or `name:key=value,...`:
engine options become `-O key=value`, and max_model_len, max_queue, threads, dtype, device and request_timeout
the server's own flags): each is started as `python -m shared.serve` on a free port of 127.0.0.1, awaited on GET
/health, measured, and stopped with SIGTERM, one after another.

The requests are the same for every server: from `--seed`, `--num-requests` prompts of random token ids (from the
tokenizer's vocabulary, the first 16 ids left out as special) with lengths drawn uniformly from `--input-len`, and
`max_tokens` drawn from `--output-len` with `ignore_eos`, so that every engine generates exactly as many tokens.
Without a tokenizer (`--url` serving a model that is neither bundled nor a local directory, and no `--tokenizer`)
the prompts are random common words, about one token each; the chat endpoint gets the prompt's text as one user
message. The arrivals are a Poisson process at `--rate` requests/s (exponential gaps from a generator of their
own, seeded by `--seed`: another rate leaves the requests unchanged); `--rate inf` sends them all at once.
`--max-concurrency N` holds a request back, client side, while N are in flight.

Every request streams (`stream_options.include_usage`), on one aiohttp session, and is timed on the client:

    TTFT  from sending the request to the first chunk that carries text (queueing, prefill, the first token)
    ITL   the gaps between consecutive chunks that carry text (a chunk is usually one token)
    E2E   from sending the request to its last byte ([DONE])

Output tokens are the server's `usage.completion_tokens`; the throughputs divide the completed requests' tokens
(output, and prompt + output) by the duration, from the first arrival to the last byte of the run. A request the
server refuses (429, 503) or fails (any other status, an error event, a timeout, a broken connection) is counted
with its status and never stops the run. One warm-up request runs before the measured ones: it also checks the
model name, the API key and the endpoint, so that such a mistake is one red line (exit status 2), as is every
other mistake in the arguments. The report is a table per server (with ratios to the first: throughput higher is
better, latencies lower) and, with `--out`, a JSON: {"setup": ..., "results": [summary + every request's times]}.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import math
import os
import random
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from shared.tools.bench.checks import BenchError
from shared.tools.bench.cli import (
    _count,
    _length_range,
    _output_console,
    _Parser,
    _positive,
    _positive_float,
    _write,
    guarded,
    out_path,
)
from shared.tools.bench.machine import machine_info
from shared.tools.bench.progress import Reporter
from shared.tools.bench.results import _pct
from shared.tools.bench.tables import DOWN, UP, _lohi

HOST = "127.0.0.1"  # where --launch servers listen
ROOT = Path(__file__).resolve().parents[3]  # the repository: on the launched server's PYTHONPATH
ENDPOINTS = {"completions": "/v1/completions", "chat": "/v1/chat/completions"}
REFUSED = (429, 503)  # the server's "not now" (queue full, shutting down), told apart from failures
# spec keys that are the server's own flags rather than engine options (-O key=value)
SERVER_FLAGS = {"max_model_len": "--max-model-len", "max_queue": "--max-queue", "threads": "--threads",
                "dtype": "--dtype", "device": "--device", "request_timeout": "--request-timeout"}
LATENCIES = ("ttft", "itl", "e2e")
STATS = ("mean", "p50", "p90", "p99")
# every figure compared with the first server: True where higher is better
FIGURES = {"requests_per_s": True, "output_tok_per_s": True, "total_tok_per_s": True,
           **{f"{m}_ms_{s}": False for m in LATENCIES for s in STATS}}
# prompts without a tokenizer: common short words, about one token each in any BPE vocabulary
_WORD_TEXT = ("the of and to in is was for on are with as at be by this had not but from or have an they which one you "
              "were her all she there would their we him been has when who will more no if out so said what up its about "
              "into than them can only other new some could time these two may then do first any my now such like our "
              "over man me even most made after also did many before must through back years where much your way well "
              "down should because each just those people how too little state good very make world still own see men")
WORDS = tuple(_WORD_TEXT.split())


# ------------------------------------------------------------------------------------------ arguments


def _rate(text: str) -> float:
    """Requests per second: a positive number, or inf (every request at once)."""
    try:
        x = float(text)
    except ValueError:
        x = math.nan
    if not x > 0:  # also NaN
        raise argparse.ArgumentTypeError(f"expected a positive number of requests per second or inf, got {text!r}")
    return x


def parser() -> argparse.ArgumentParser:
    ap = _Parser(prog="python -m shared.tools.bench serve", description=__doc__.split("\n\n")[0])
    ap.add_argument("--url", default=None, help="a running server, e.g. http://127.0.0.1:8000")
    ap.add_argument("--launch", action="append", default=None, metavar="SPEC",
                    help="start `python -m shared.serve` with this engine, e.g. m6_prefix or m5_chunked:max_num_seqs=64 "
                         f"(options: the engine's, and {', '.join(SERVER_FLAGS)}); repeatable: one after another")
    ap.add_argument("--model", default="tiny-qwen3",
                    help="the served model's name; with --launch also the model to load (bundled name, directory, hub "
                         "id, random:<preset>)")
    ap.add_argument("--tokenizer", default=None, help="--url: a tokenizer (model directory or bundled name) for the "
                                                      "prompt ids, when the served model is not one here")
    ap.add_argument("--rate", type=_rate, default=math.inf, help="requests per second, Poisson; inf: all at once (default)")
    ap.add_argument("--num-requests", type=_positive, default=64, help="default 64")
    ap.add_argument("--input-len", type=_length_range, default=(32, 256), help="prompt tokens, N or LO:HI (default 32:256)")
    ap.add_argument("--output-len", type=_length_range, default=(32, 128), help="output tokens, N or LO:HI (default 32:128)")
    ap.add_argument("--prefix-len", type=_count, default=0,
                    help="a shared prefix of N tokens (a system prompt) in front of every prompt (default 0)")
    ap.add_argument("--seed", type=int, default=0, help="the requests and the arrivals (default 0)")
    ap.add_argument("--max-concurrency", type=_positive, default=None,
                    help="at most this many requests in flight, client side (default: no limit)")
    ap.add_argument("--endpoint", choices=tuple(ENDPOINTS), default="completions",
                    help="completions (/v1/completions, token ids) or chat (/v1/chat/completions, text)")
    ap.add_argument("--api-key", default=os.environ.get("FOLOVLLM_API_KEY"),
                    help="sent as 'Authorization: Bearer KEY' (and given to launched servers); default $FOLOVLLM_API_KEY")
    ap.add_argument("--timeout", type=_positive_float, default=600.0, help="seconds per request (default 600)")
    ap.add_argument("--startup-timeout", type=_positive_float, default=300.0,
                    help="--launch: seconds a server may take to become ready (default 300)")
    ap.add_argument("--plot", default=None, help="draw TTFT, ITL and E2E percentiles per server into this PNG")
    ap.add_argument("--out", default=None, help="write the JSON result here; a bare NAME.json goes to bench_results/")
    return ap


def check_lengths(name: str, lo_hi: tuple[int, int]) -> tuple[int, int]:
    lo, hi = lo_hi
    if not 1 <= lo <= hi:
        raise BenchError(f"--{name} must be N or LO:HI with 1 <= LO <= HI, got {lo}:{hi}")
    return lo, hi


def check_url(url: str) -> str:
    """The server's base address (without a trailing / or /v1), or BenchError."""
    parts = urllib.parse.urlsplit(url)
    try:
        port_ok = parts.port is None or parts.port > 0
    except ValueError:
        port_ok = False
    if parts.scheme not in ("http", "https") or not parts.hostname or not port_ok:
        raise BenchError(f"--url {url!r}: expected the server's address, http://HOST:PORT")
    base = url.rstrip("/")
    return base[:-3] if base.endswith("/v1") else base


def parse_launch(spec: str) -> tuple[str, list[str]]:
    """`name` or `name:key=value,...` -> (engine, the server's extra arguments); names and keys checked here."""
    from shared.llm import engine_options
    from shared.serve.cli import SERVABLE, engine_option
    from shared.tools.milestones import llm_class

    name, _, rest = spec.partition(":")
    if name not in SERVABLE:
        raise BenchError(f"--launch {spec!r}: unknown engine {name!r}: choose from {' '.join(SERVABLE)}, as name or "
                         "name:key=value,key=value")
    allowed = [*engine_options(llm_class(name).engine_class), *SERVER_FLAGS]
    flags, seen = [], set()
    for item in rest.split(",") if rest else []:
        try:
            key, value = engine_option(item)  # the server's own -O parser: the same rule for key=value
        except argparse.ArgumentTypeError as err:
            raise BenchError(f"--launch {spec!r}: {err}") from None
        if key in seen:
            raise BenchError(f"--launch {spec!r}: {key} given twice")
        if key not in allowed:
            raise BenchError(f"--launch {spec!r}: {name} takes no option {key}; it takes {', '.join(allowed)}")
        seen.add(key)
        flags += [SERVER_FLAGS[key], str(value)] if key in SERVER_FLAGS else ["-O", f"{key}={value}"]
    return name, flags


# ------------------------------------------------------------------------------------------ the requests


@dataclass
class Planned:
    """One request of the workload: when it is due (seconds from the start) and what it asks for."""

    index: int
    arrival_s: float
    prompt: list[int] | str
    input_len: int  # drawn: token ids, or words without a tokenizer
    output_len: int  # max_tokens (EOS ignored: exactly this many)


def poisson_arrivals(n: int, rate: float, seed: int) -> list[float]:
    """`n` arrival times in seconds: the first at 0, then exponential gaps of mean 1/rate (a Poisson process),
    from a generator of their own; `rate` inf: all at 0."""
    if rate == math.inf:
        return [0.0] * n
    rng = random.Random(seed)
    times, t = [], 0.0
    for _ in range(n):
        times.append(t)
        t += rng.expovariate(rate)
    return times


def plan_requests(n: int, input_len: tuple[int, int], output_len: tuple[int, int], seed: int, rate: float,
                  tokenizer=None, chat: bool = False, prefix_len: int = 0) -> list[Planned]:
    """The workload, the same for every server given the same arguments. With a tokenizer the prompts are random
    ids (its vocabulary, not the first 16: special tokens), sent as ids to completions and decoded to text for
    chat; without one, random words. The requests' generator is not the arrivals': another rate, same requests.
    `prefix_len` puts one shared prefix of that many tokens (a system prompt) in front of every prompt."""
    rng = random.Random(f"requests-{seed}")  # a str seed is hashed with sha512: the same in every process
    shared_rng = random.Random(f"prefix-{seed}")
    arrivals = poisson_arrivals(n, rate, seed)

    def draw(r: random.Random, length: int) -> list:
        if tokenizer is None:
            return [r.choice(WORDS) for _ in range(length)]
        return [r.randrange(16, tokenizer.vocab_size) for _ in range(length)]

    prefix = draw(shared_rng, prefix_len)
    planned = []
    for i, at in enumerate(arrivals):
        p, o = rng.randint(*input_len), rng.randint(*output_len)
        ids = prefix + draw(rng, p)
        if tokenizer is None:
            prompt: list[int] | str = " ".join(ids)
        else:
            prompt = tokenizer.decode(ids) if chat else ids
        planned.append(Planned(i, at, prompt, prefix_len + p, o))
    return planned


def request_body(req: Planned, model: str, endpoint: str) -> dict:
    body = {"model": model, "max_tokens": req.output_len, "temperature": 0, "ignore_eos": True, "stream": True,
            "stream_options": {"include_usage": True}}
    if endpoint == "chat":
        text = req.prompt if isinstance(req.prompt, str) else " ".join(map(str, req.prompt))
        return {**body, "messages": [{"role": "user", "content": text}]}
    return {**body, "prompt": req.prompt}


# ------------------------------------------------------------------------------------------ the client


@dataclass
class Record:
    """What the client saw of one request; times in seconds from the start of the run."""

    index: int
    arrival_s: float  # when it was due
    input_len: int
    output_len: int  # asked for
    send_s: float | None = None  # when it went out (later than arrival_s while --max-concurrency holds it)
    chunk_s: list[float] = field(default_factory=list)  # every chunk that carried text
    end_s: float | None = None  # the last byte
    status: int | None = None  # HTTP status; None: no answer (connection error, timeout)
    error: str | None = None
    prompt_tokens: int | None = None  # usage, from the server
    output_tokens: int | None = None
    done: bool = False  # [DONE] arrived

    @property
    def ok(self) -> bool:
        return self.status == 200 and self.error is None and self.done

    def figures(self) -> dict:
        """The record as JSON, with its TTFT, ITLs and E2E."""
        d = {k: v for k, v in asdict(self).items() if k != "chunk_s"}
        sent = self.send_s
        d.update(ok=self.ok, ttft_s=self.chunk_s[0] - sent if self.chunk_s and sent is not None else None,
                 itl_s=[b - a for a, b in itertools.pairwise(self.chunk_s)],
                 e2e_s=self.end_s - sent if self.end_s is not None and sent is not None else None)
        return d


def _error_message(body: str) -> str:
    """OpenAI's `error.message`, else the body's first line."""
    try:
        return str(json.loads(body)["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return (body.strip().splitlines() or ["(empty body)"])[0][:200]


def _chunk_text(chunk: dict) -> str:
    """The text a streamed chunk carries: completions' `text`, chat's `delta.content`."""
    parts = []
    for choice in chunk.get("choices") or []:
        parts.append(choice.get("text") or (choice.get("delta") or {}).get("content") or "")
    return "".join(parts)


class Live:
    """The run's progress: requests done / total, in flight, live output tok/s (text chunks, about one token
    each) on a terminal, at most ten updates a second; one line on stderr at the end otherwise."""

    def __init__(self, reporter: Reporter, label: str, total: int) -> None:
        self.reporter, self.task = reporter, reporter.start(label, total)
        self.in_flight = self.done = self.chunks = 0
        self.shown = 0.0

    def update(self, force: bool = False) -> None:
        now = time.perf_counter()
        if self.task.id is None or (not force and now - self.shown < 0.1):
            return
        self.shown = now
        rate = self.chunks / max(now - self.task.t0, 1e-9)
        self.reporter.progress.update(self.task.id, completed=self.done,
                                      rate=f"{self.in_flight} in flight · {rate:,.0f} output tok/s")

    def finish(self, done: int, tokens: int, wall: float) -> None:
        self.task.done, self.task.tokens = done, tokens
        self.task.finish(max(wall, 1e-9))


async def send(session, url: str, headers: dict, body: dict, rec: Record, timeout: float, start: float,
               live: Live | None = None) -> Record:
    """One streamed request, its times stamped into `rec`; an error status, an error event, a timeout or a broken
    connection is recorded, never raised."""
    import aiohttp

    rec.send_s = time.perf_counter() - start
    try:
        async with session.post(url, json=body, headers=headers, timeout=aiohttp.ClientTimeout(total=timeout)) as resp:
            rec.status = resp.status
            if resp.status != 200:
                rec.error = _error_message(await resp.text())
                return rec
            async for raw in resp.content:  # one SSE line at a time
                line = raw.strip()
                if not line.startswith(b"data:"):
                    continue
                data = line[5:].strip()
                if data == b"[DONE]":
                    rec.done = True
                    break
                chunk = json.loads(data)
                if "error" in chunk:  # a failure after the 200 went out (the server's timeout, an engine error)
                    rec.error = _error_message(data.decode())
                if _chunk_text(chunk):
                    rec.chunk_s.append(time.perf_counter() - start)
                    if live is not None:
                        live.chunks += 1
                        live.update()
                usage = chunk.get("usage")
                if usage:
                    rec.prompt_tokens, rec.output_tokens = usage.get("prompt_tokens"), usage.get("completion_tokens")
            rec.end_s = time.perf_counter() - start
            if not rec.done and rec.error is None:
                rec.error = "the stream ended without [DONE]"
    except asyncio.TimeoutError:
        rec.error = f"no answer within --timeout {timeout:g} s"
    except (aiohttp.ClientError, ValueError, OSError) as err:  # ValueError: a bad JSON line or an overlong line
        rec.error = f"{type(err).__name__}: {err}".rstrip(": ")
    return rec


def _session(limit: int):
    import aiohttp

    # the connector's default of 100 connections would queue requests inside aiohttp, hidden from the
    # measurements: allow as many as may be in flight (0: no limit)
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=limit), trust_env=False)


async def run_load(base: str, requests: list[Planned], model: str, endpoint: str, headers: dict, timeout: float,
                   max_concurrency: int | None = None, live: Live | None = None) -> tuple[list[Record], float]:
    """Send every request at its arrival time (or when a slot frees, under `max_concurrency`) and wait for all.
    Returns the records and the duration: from the start to the last byte of the last request."""
    url = base + ENDPOINTS[endpoint]
    gate = asyncio.Semaphore(max_concurrency) if max_concurrency else contextlib.nullcontext()

    async with _session(max_concurrency or 0) as session:
        start = time.perf_counter()

        async def one(req: Planned) -> Record:
            await asyncio.sleep(max(0.0, req.arrival_s - (time.perf_counter() - start)))
            rec = Record(req.index, req.arrival_s, req.input_len, req.output_len)
            async with gate:
                if live is not None:
                    live.in_flight += 1
                try:
                    await send(session, url, headers, request_body(req, model, endpoint), rec, timeout, start, live)
                finally:
                    if live is not None:
                        live.in_flight -= 1
                        live.done += 1
                        live.update(force=True)
            return rec

        records = await asyncio.gather(*(one(r) for r in requests))
        return list(records), time.perf_counter() - start


async def probe(base: str, model: str, headers: dict) -> dict:
    """GET /v1/models: the server answers, takes the key and serves `model`; returns that model's entry (this
    project's server adds `engine` and `max_model_len`)."""
    import aiohttp

    async with _session(0) as session:
        try:
            async with session.get(base + "/v1/models", headers=headers, timeout=aiohttp.ClientTimeout(total=30)) as r:
                text = await r.text()
                status = r.status
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as err:
            raise BenchError(f"cannot reach the server at {base}: {str(err) or type(err).__name__}") from None
    if status == 401:
        raise BenchError(f"{base} refused the API key ({_error_message(text)}): give it with --api-key or $FOLOVLLM_API_KEY")
    if status != 200:
        raise BenchError(f"{base}/v1/models answered {status}: {_error_message(text)}")
    try:
        served = json.loads(text)["data"]
    except (ValueError, KeyError, TypeError):
        raise BenchError(f"{base}/v1/models did not answer OpenAI's model list: is it an OpenAI-compatible server?") from None
    entry = next((m for m in served if m.get("id") == model), None)
    if entry is None:
        names = ", ".join(repr(m.get("id")) for m in served) or "nothing"
        raise BenchError(f"{base} serves {names}, not {model!r}: give the served name with --model")
    return entry


async def warm_up(base: str, req: Planned, model: str, endpoint: str, headers: dict, timeout: float) -> None:
    """One short request before the measured ones (first-request costs out of the way); its failure is the
    user's mistake or a broken server, said in one line."""
    async with _session(0) as session:
        rec = Record(-1, 0.0, req.input_len, req.output_len)
        await send(session, base + ENDPOINTS[endpoint], headers, request_body(req, model, endpoint), rec, timeout,
                   time.perf_counter())
    if not rec.ok:
        status = f"status {rec.status}" if rec.status is not None else "no answer"
        raise BenchError(f"the warm-up request to {base}{ENDPOINTS[endpoint]} failed ({status}): {rec.error}")


# ------------------------------------------------------------------------------------------ figures


def percentile(xs: list[float], q: int) -> float | None:
    """The q-th percentile (linear interpolation between the closest ranks, as numpy's default); None if empty."""
    return _pct(xs, q) if xs else None


def latency_ms(xs: list[float]) -> dict:
    """mean, p50, p90, p99 of seconds, in ms (None each if there are none)."""
    out = {"mean": 1e3 * statistics.fmean(xs) if xs else None}
    for q in (50, 90, 99):
        p = percentile(xs, q)
        out[f"p{q}"] = None if p is None else 1e3 * p
    return out


def summarize_load(label: str, records: list[Record], duration: float) -> dict:
    """One server's figures: counts, throughputs over the duration, and TTFT/ITL/E2E statistics of the completed
    requests; `requests` keeps every record."""
    figs = [r.figures() for r in records]
    ok = [f for f in figs if f["ok"]]
    out_tokens = sum(f["output_tokens"] or 0 for f in ok)
    prompt_tokens = sum(f["prompt_tokens"] or 0 for f in ok)
    refused = [f for f in figs if f["status"] in REFUSED]
    by_status: dict[str, int] = {}
    for f in figs:
        if not f["ok"]:
            key = str(f["status"]) if f["status"] is not None else "no answer"
            by_status[key] = by_status.get(key, 0) + 1
    s: dict = {"engine": label, "num_requests": len(figs), "completed": len(ok), "refused": len(refused),
               "failed": len(figs) - len(ok) - len(refused), "not_ok_by_status": by_status,
               "errors": sorted({f["error"] for f in figs if f["error"]})[:5],
               "duration_s": duration, "prompt_tokens": prompt_tokens, "output_tokens": out_tokens,
               "requests_per_s": len(ok) / duration, "output_tok_per_s": out_tokens / duration,
               "total_tok_per_s": (prompt_tokens + out_tokens) / duration}
    series = {"ttft": [f["ttft_s"] for f in ok if f["ttft_s"] is not None],
              "itl": [g for f in ok for g in f["itl_s"]], "e2e": [f["e2e_s"] for f in ok]}
    for name, xs in series.items():
        s.update({f"{name}_ms_{k}": v for k, v in latency_ms(xs).items()})
    s["requests"] = figs
    return s


def add_serve_ratios(results: list[dict]) -> list[dict]:
    """Each server's figures over the first's (`ratios`, mine / first's): > 1 is better for the throughputs
    (FIGURES True), < 1 for the latencies; None where either lacks the figure."""
    if not results:
        return results
    base = results[0]
    for r in results:
        r["ratio_to"] = base["engine"]
        r["ratios"] = {k: (r[k] / base[k] if r.get(k) is not None and base.get(k) else None) for k in FIGURES}
    return results


# ------------------------------------------------------------------------------------------ report

ROWS = [  # (label, key, format); latencies follow, four rows each
    ("request throughput, req/s", "requests_per_s", ",.2f"),
    ("output tokens/s", "output_tok_per_s", ",.1f"),
    ("total tokens/s (prompt + output)", "total_tok_per_s", ",.1f"),
]


def _ratio_cell(ratio: float | None, higher: bool) -> str:
    if ratio is None:
        return ""
    better = ratio > 1 if higher else ratio < 1
    colour = "" if abs(ratio - 1) < 0.02 else ("green" if better else "red")
    return f"[{colour}]{ratio:.2f}×[/{colour}]" if colour else f"{ratio:.2f}×"


def render_result(r: dict, several: bool = False) -> Table:
    """One server's table: counts, duration, throughputs, TTFT/ITL/E2E in ms; with `several`, a column of
    ratios to the first server (mine / first's)."""
    first = r.get("ratio_to") == r["engine"]
    t = Table(title=escape(r["engine"]), title_justify="left", caption=f"{UP} higher is better · {DOWN} lower is better",
              caption_justify="left")
    t.add_column("figure")
    t.add_column("value", justify="right")
    ratios = several and not first and "ratios" in r
    if ratios:
        t.add_column(f"vs {escape(r['ratio_to'])}", justify="right")
    by = ", ".join(f"{k}: {v}" for k, v in sorted(r["not_ok_by_status"].items()))
    rows: list[tuple[str, str, str]] = [
        ("completed", f"{r['completed']} / {r['num_requests']}", ""),
        ("refused / failed", f"{r['refused']} / {r['failed']}" + (f" ({by})" if by else ""), ""),
        ("duration, s", f"{r['duration_s']:,.2f}", "")]
    for label, key, fmt in ROWS:
        rows.append((f"{label} {UP}", format(r[key], fmt), _ratio_cell(r.get("ratios", {}).get(key), True)))
    for name in LATENCIES:
        for stat in STATS:
            key = f"{name}_ms_{stat}"
            value = "–" if r[key] is None else f"{r[key]:,.1f}"
            rows.append((f"{name.upper()} {stat}, ms {DOWN}", value, _ratio_cell(r.get("ratios", {}).get(key), False)))
    for label, value, ratio in rows:
        t.add_row(label, value, *([ratio] if ratios else []))
    return t


def describe_setup(setup: dict) -> str:
    """The setup in one sentence."""
    rate = "all at once" if setup["rate"] == "inf" else f"Poisson at {setup['rate']:g} req/s"
    cap = f", at most {setup['max_concurrency']} in flight" if setup["max_concurrency"] else ""
    where = ", ".join(setup["engines"]) if setup["engines"] else setup["url"]
    prefix = f"a shared {setup['prefix_len']}-token prefix + " if setup.get("prefix_len") else ""
    return (f"serve · {setup['model']} · {where} · {setup['num_requests']} requests {rate}{cap} · input "
            f"{prefix}{_lohi(setup['input_len'])} {setup['prompts']}, output {_lohi(setup['output_len'])} tokens (EOS ignored) · "
            f"/v1/{'chat/' if setup['endpoint'] == 'chat' else ''}completions, streamed · seed {setup['seed']} · "
            f"client {setup['machine'].get('cpu', '?')} · {setup['date']}")


# ------------------------------------------------------------------------------------------ launched servers


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def _tail(log, lines: int = 3) -> str:
    """The server's last words: its one-line error if it printed one, else its last lines, on one line."""
    # pread: the server shares the file's offset, which a seek would move under its next write
    size = os.fstat(log.fileno()).st_size
    data = os.pread(log.fileno(), min(size, 1 << 16), max(0, size - (1 << 16)))
    text = re.sub(r"\x1b\[[0-9;]*m", "", data.decode(errors="replace"))
    kept = [line.strip() for line in text.splitlines() if line.strip()]
    errors = [line for line in kept if line.startswith("error:")]
    if errors:  # shared.serve's one red line for a mistake: the mistake is the spec's
        return errors[-1].removeprefix("error:").strip()
    return " | ".join(kept[-lines:]) or "(it printed nothing)"


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM (the server drains, then exits), and SIGKILL if it has not after a minute."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _wait_ready(proc: subprocess.Popen, base: str, spec: str, log, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise BenchError(f"--launch {spec}: the server exited with status {proc.returncode} before it was ready: "
                             f"{_tail(log)}")
        try:
            with urllib.request.urlopen(base + "/health", timeout=2) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, OSError):  # not listening yet, or 503 while it starts
            pass
        if time.monotonic() > deadline:
            raise BenchError(f"--launch {spec}: the server was not ready (GET /health) after --startup-timeout "
                             f"{timeout:g} s: {_tail(log)}")
        time.sleep(0.2)


@contextlib.contextmanager
def _starting(spec: str):
    """A spinner while a server starts, on a terminal only (elsewhere an error stays the only line on stderr)."""
    err = Console(stderr=True)
    if not err.is_terminal:
        yield
        return
    with err.status(f"starting {escape(spec)} ..."):
        yield


@contextlib.contextmanager
def launched(spec: str, engine: str, flags: list[str], model: str, served_name: str, api_key: str | None,
             startup_timeout: float):
    """`python -m shared.serve` for one spec on a free port of 127.0.0.1, ready; yields (base URL, process, its output file) and
    stops it (SIGTERM) on the way out, whatever happens."""
    port = free_port()
    cmd = [sys.executable, "-m", "shared.serve", "--engine", engine, "--model", model, "--served-model-name",
           served_name, "--host", HOST, "--port", str(port), "--log-level", "warning", *flags]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    if api_key:
        env["FOLOVLLM_API_KEY"] = api_key  # not on the command line, where `ps` shows it
    base = f"http://{HOST}:{port}"
    # its output to a file: a pipe nobody reads while the run goes on would fill and stall the server
    with tempfile.TemporaryFile() as log:
        # a session of its own: Ctrl-C reaches only the benchmark, which then stops the server itself
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)
        previous = _stop_on_sigterm()
        try:
            with _starting(spec):
                _wait_ready(proc, base, spec, log, startup_timeout)
            yield base, proc, log
        finally:
            _stop(proc)
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)


def _stop_on_sigterm():
    """SIGTERM to the benchmark becomes SystemExit, so that the `finally` above stops the server (in a session of
    its own, nothing else would). Returns the handler it replaced; None off the main thread, where it cannot."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def handler(signum, frame):
        raise SystemExit(128 + signum)

    return signal.signal(signal.SIGTERM, handler)


# ------------------------------------------------------------------------------------------ the run


def _tokenizer(args: argparse.Namespace):
    """The tokenizer whose vocabulary the prompts are drawn from, or None (text prompts): --tokenizer, else the
    model if it is here (bundled, or a directory; always so with --launch). A hub id is not downloaded for it."""
    from shared.loader import BUNDLED, resolve_model
    from shared.tokenizer import Tokenizer

    name = args.tokenizer
    if name is None and (args.launch or args.model in BUNDLED or Path(args.model).expanduser().is_dir()):
        name = args.model
    if name is None:
        return None
    try:
        return Tokenizer(resolve_model(name))
    except ValueError as err:  # ModelNotFoundError, ModelFormatError
        raise BenchError(f"--tokenizer {name!r}: {err}" if args.tokenizer else str(err)) from None


def _measure(label: str, base: str, requests: list[Planned], warm: Planned, args: argparse.Namespace,
             headers: dict) -> dict:
    """Probe, warm up and run the load against one server; its summary."""
    async def go() -> dict:
        entry = await probe(base, args.model, headers)
        limit = entry.get("max_model_len")
        need = args.prefix_len + args.input_len[1] + args.output_len[1]
        if isinstance(limit, int) and need > limit:
            raise BenchError(f"{label}: the longest request ({need:,} tokens, input + output) does not fit the server's "
                             f"max_model_len {limit:,}: shorten --input-len / --output-len")
        await warm_up(base, warm, args.model, args.endpoint, headers, args.timeout)
        with Reporter(Console(stderr=True)) as reporter:
            live = Live(reporter, label, len(requests))
            records, duration = await run_load(base, requests, args.model, args.endpoint, headers, args.timeout,
                                               args.max_concurrency, live)
            s = summarize_load(label, records, duration)
            live.finish(s["completed"], s["output_tokens"], duration)
        s["served_engine"] = entry.get("engine")
        return s

    return asyncio.run(go())


def main(argv: list[str] | None = None) -> dict:
    return guarded(_main, parser().parse_args(sys.argv[1:] if argv is None else argv))


def _targets(args: argparse.Namespace) -> list[tuple[str, str, list[str]]]:
    """(spec, engine, server flags) per --launch; [] with --url. Checks that exactly one of them is given."""
    if (args.url is None) == (args.launch is None):
        raise BenchError("give either --url URL (a running server) or --launch SPEC (start one), not both or neither")
    if args.url is not None:
        args.url = check_url(args.url)
        return []
    twice = sorted({s for s in args.launch if args.launch.count(s) > 1})
    if twice:
        raise BenchError(f"--launch {twice[0]!r} given twice: each spec is one table")
    return [(spec, *parse_launch(spec)) for spec in args.launch]


def _main(args: argparse.Namespace) -> dict:
    import torch

    from shared.tools.bench.checks import check_model
    from shared.tools.bench.engines import resolve_bench_model

    check_lengths("input-len", args.input_len)
    check_lengths("output-len", args.output_len)
    targets = _targets(args)
    if targets:
        check_model(args.model)
    tokenizer = _tokenizer(args)
    chat = args.endpoint == "chat"
    requests = plan_requests(args.num_requests, args.input_len, args.output_len, args.seed, args.rate, tokenizer, chat,
                             args.prefix_len)
    # the warm-up: a short request of its own (seed + 1), so that no measured prompt is cached before its turn
    warm = plan_requests(1, (args.input_len[0],) * 2, (2, 2), args.seed + 1, math.inf, tokenizer, chat)[0]
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    device = "cuda" if torch.cuda.is_available() else "cpu"
    setup = {"model": args.model, "url": args.url, "engines": [t[0] for t in targets], "rate": "inf" if args.rate == math.inf
             else args.rate, "num_requests": args.num_requests, "input_len": list(args.input_len),
             "output_len": list(args.output_len), "prefix_len": args.prefix_len, "seed": args.seed, "endpoint": args.endpoint,
             "max_concurrency": args.max_concurrency, "timeout_s": args.timeout,
             "prompts": "random words" if tokenizer is None else "random token ids as text" if chat else "random token ids",
             "machine": machine_info(device), "date": time.strftime("%Y-%m-%d")}
    console = _output_console()
    console.print(f"[bold]setup[/bold] {escape(describe_setup(setup))}", highlight=False)
    results = []
    if not targets:
        results.append(_measure(args.url, args.url, requests, warm, args, headers))
    else:
        # random:<preset>: a random checkpoint of that shape, loaded by every server under the name asked for
        model = resolve_bench_model(args.model, "bfloat16" if device == "cuda" else "float32")
        for spec, engine, flags in targets:
            with launched(spec, engine, flags, model, args.model, args.api_key, args.startup_timeout) as (base, proc, log):
                result = _measure(spec, base, requests, warm, args, headers)
                if proc.poll() is not None:  # it died under load: the failed requests say so, and so does this
                    result["server_exit"] = f"status {proc.returncode}: {_tail(log)}"
            result["launch"] = {"engine": engine, "args": flags}
            results.append(result)
    add_serve_ratios(results)
    for r in results:
        console.print(render_result(r, several=len(results) > 1))
        if r.get("server_exit"):
            console.print(f"[red]the server exited during the run, {escape(r['server_exit'])}[/red]")
    report = {"setup": setup, "results": results}
    if args.out:
        _write(report, args.out)
    if args.plot:
        from shared.tools.bench.plots import plot_serve

        plot_serve({f"{args.num_requests} requests, {setup['rate']} req/s": report}, out_path(args.plot))
        console.print(f"wrote {escape(str(out_path(args.plot)))}", highlight=False)
    return report
