"""What a run prints: `describe` (the setup in one sentence), `render_table` (the result table, compact or
full, every header saying which way is better), `render_compare` (each engine of a saved run over the
engine before it, figure by figure), `render_online` (the online workload's latencies, stalls and factors) and
`render_attention` (the attention workload's prefill and decode tables), and the prefix cache's scenarios:
`render_prefix_ttft`, `render_multiturn`, `render_kv_sweep`."""

from __future__ import annotations

import itertools

from rich import box
from rich.table import Table

from shared.tools.bench.attention import size_text
from shared.tools.bench.results import add_ratios

UP, DOWN = "↑", "↓"  # higher is better, lower is better


def describe(setup: dict) -> str:
    """The setup in one sentence (wraps to the console's width)."""
    w = setup["workload"]
    if w["name"] == "attention":
        return _describe_attention(setup)
    if w["name"].startswith("prefix-"):
        load = _prefix_load(setup)
    elif w["name"] == "latency":
        load = f"{w['num_requests']} requests one at a time, prompt {w['prompt_len']} → {w['output_len']} tokens"
    elif w["name"] == "online":
        load = _online_load(setup)
    else:
        span = _lohi
        load = (f"{w['num_requests']} requests at once, {_prefix_words(w)}prompt {span(w['prompt_len'])}, "
                f"output {span(w['output_len'])}, max_num_seqs {setup.get('max_num_seqs') or 'default'}")
        for key in ("max_model_len", "kv_cache_memory_bytes", "block_size"):
            if setup.get(key):
                load += f", {key} {setup[key]:,}"
        for engine, model in (setup.get("engine_models") or {}).items():
            load += f", {engine} on {model}"
    m = setup.get("machine", {})
    where = m.get("gpu") or f"{m.get('cpu', '?')}, {m.get('cores', '?')} cores"
    return (f"{w['name']} · {setup['model']} · {setup['device']} {setup['dtype']} · {where} · "
            f"{setup.get('threads', m.get('threads'))} torch threads · {load} · "
            f"{setup.get('repeat', 1)} repetition(s), engines interleaved · greedy, EOS ignored · {setup.get('date', '')}")


def _lohi(lo_hi) -> str:
    return f"{lo_hi[0]}" if lo_hi[0] == lo_hi[1] else f"{lo_hi[0]}–{lo_hi[1]}"


def _prefix_words(w: dict) -> str:
    """A shared prefix in front of every prompt, in words ("" without one)."""
    n = w.get("prefix_len") or 0
    if not n:
        return ""
    which = "one shared prefix" if w.get("num_prefixes", 1) == 1 else f"one of {w['num_prefixes']} prefixes (at random)"
    return f"{which} of {n:,} tokens then "


def _prefix_load(setup: dict) -> str:
    """What a `prefix` scenario ran, in words."""
    w, bs = setup["workload"], setup.get("block_size")
    if w["name"] == "prefix-ttft":
        return (f"TTFT (1 output token) of a prompt of {'/'.join(f'{n:,}' for n in w['lengths'])} tokens cached but for its "
                f"last block: the same prompt with another last {bs} tokens ran just before; every round empties the "
                f"cache first; against {setup.get('reference', 'the engines that do not cache')}; blocks of {bs}")
    if w["name"] == "prefix-multiturn":
        return (f"{w['conversations']} conversations × {w['turns']} turns, closed loop: a first prompt of "
                f"{w['first_len']} tokens, each later turn the last prompt + its {w['output_len']}-token answer + "
                f"{w['user_len']} new tokens; each turn every conversation at once; every round from an empty cache; "
                f"blocks of {bs}, max_num_seqs {setup.get('max_num_seqs') or 'default'}")
    per = setup.get("kv_bytes_per_token")
    load = (f"{w['num_requests']} requests at once, {_prefix_words(w)}prompt {_lohi(w['prompt_len'])}, output "
            f"{_lohi(w['output_len'])}; m6_prefix with {' / '.join(f'{b:,}' for b in w['kv_blocks'])} KV blocks of {bs} "
            f"tokens{f' ({per:,} bytes a token)' if per else ''}, policies {' '.join(w['policies'])}")
    if w.get("baseline"):
        load += ", and caching off at the largest size"
    return load + f"; max_model_len {setup.get('max_model_len'):,}, max_num_seqs {setup.get('max_num_seqs') or 'default'}"


def _online_load(setup: dict) -> str:
    w = setup["workload"]
    arrive = "at fixed times" if w.get("arrivals") else f"Poisson at {w['rate']:g}/s"
    load = (f"{w['num_requests']} short requests arriving {arrive}, {_prefix_words(w)}prompt {_lohi(w['prompt_len'])}, "
            f"output {_lohi(w['output_len'])}")
    if w["num_long"]:
        load += (f"; {w['num_long']} long prompt(s) of {_lohi(w['long_len'])}{' after the prefix' if w.get('prefix_len') else ''}"
                 f" → {w['long_output_len']} tokens, evenly spaced among them (short requests within {w['behind_s']:g} s "
                 f"after one are behind it)")
    load += (f"; replayed in wall-clock time, TTFT from the scheduled arrival; "
             f"max_num_seqs {setup.get('max_num_seqs') or 'default'}")
    for key in ("max_model_len", "kv_cache_memory_bytes"):
        if setup.get(key):
            load += f", {key} {setup[key]:,}"
    return load


def _fmt(r: dict, key: str, spec: str) -> str:
    if r.get(key) is None:
        return "–"
    value = r[key]
    return format(round(value) if spec.endswith("d") else value, spec)  # a median of counts may be x.5


def _ms(r: dict, key: str) -> str:
    v = r.get(key)
    return "–" if v is None else f"{v:,.0f}" if v >= 100 else f"{v:.2f}" if v < 10 else f"{v:.1f}"


def _ratio(r: dict) -> str:
    if r.get("ratio") is None:
        return "–"
    if r.get("ratio_min") is None or len(r.get("ratios", [])) < 2:
        return f"{r['ratio']:.2f}×"
    return f"{r['ratio']:.2f}× {r['ratio_min']:.2f}–{r['ratio_max']:.2f}"


def _has_hits(results: list[dict]) -> bool:
    """Does some engine report a prefix-cache hit rate (M6 with caching on)? Then the tables get a hit % column."""
    return any(r.get("prefix_hit_rate") is not None for r in results)


def render_table(results: list[dict], setup: dict, full: bool = False) -> Table:
    """The result table. Compact (fits 80 columns): engine, median output tok/s, median ratio to the first
    engine with its min–max over the repetitions, TTFT/TPOT p50, KV utilisation (or, when some engine reports
    one, the prefix-cache hit rate in its place), preemptions. `full`: every figure, the prefix cache's too.
    Every header says which way is better."""
    base = results[0]["engine"] if results else "?"
    if not full:
        t = Table(box=box.SIMPLE_HEAD, pad_edge=False, caption=f"{UP} higher is better · {DOWN} lower is better · "
                  f"ratio: median output tok/s over {base}'s in the same round, and min–max over the rounds",
                  caption_justify="left")
        hits = _has_hits(results)  # then the prefix-cache hit rate takes KV utilisation's place (--full has both)
        kv = (f"hit %\n{UP}", "prefix_hit_rate") if hits else (f"KV {UP}\nutil", "kv_mean_utilization")
        if hits:
            t.caption += " · hit %: prompt tokens found in the prefix cache (last round)"
        for col in ("engine", f"tok/s {UP}\nmedian", f"× {base} {UP}\nmed min–max", f"TTFT {DOWN}\np50 ms",
                    f"TPOT {DOWN}\np50 ms", kv[0], f"preempt\n{DOWN}"):
            t.add_column(col, justify="left" if col == "engine" else "right")
        for r in results:
            t.add_row(r["engine"], f"{r['output_tok_per_s']:,.1f}", _ratio(r), _ms(r, "ttft_ms_p50"), _ms(r, "tpot_ms_p50"),
                      _fmt(r, kv[1], ".1%"), _fmt(r, "preemptions", "d"))
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
    if _has_hits(results):
        cols += [(f"prefix hit {UP}\nrate", lambda r: _fmt(r, "prefix_hit_rate", ".1%")),
                 ("prefix hit\ntokens", lambda r: _fmt(r, "prefix_hit_tokens", ",d")),
                 (f"evictions\n{DOWN}", lambda r: _fmt(r, "prefix_evictions", ",d"))]
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
    # the online workload's
    "behind_long_ttft_ms_p50": ("TTFT p50 behind a long prompt", DOWN), "long_ttft_ms_p50": ("TTFT p50 of long prompts", DOWN),
    "itl_ms_p50": ("ITL p50", DOWN), "itl_ms_p99": ("ITL p99", DOWN), "max_stall_ms": ("longest stall", DOWN),
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


# -------------------------------------------------------------------------------------------- online


def _factor(r: dict, key: str) -> str:
    f = (r.get("factors") or {}).get(key)
    return "–" if f is None else f"{f:.2f}×"


def render_online(report: dict, full: bool = False) -> Table:
    """The online table. Compact (fits 80 columns): per engine spec TTFT p50/p99 (every request, from its scheduled
    arrival), TTFT p50 of the short requests behind a long prompt, ITL p50/p99, the longest stall, output tok/s, and
    how many times better than the first spec (ITL p99, behind-long TTFT; when some spec reports a prefix-cache hit
    rate, the hit rate in the place of the behind-long factor), medians of the rounds. `full`: also the short and
    long requests' TTFT apart, tokens, steps, every factor and the hit rate."""
    results, setup = report["results"], report["setup"]
    base = results[0]["engine"] if results else "?"
    rounds = setup.get("repeat", 1)
    t = Table(box=box.SIMPLE_HEAD, pad_edge=False, caption_justify="left", collapse_padding=not full,
              caption=f"{UP} higher is better · {DOWN} lower is better · times in ms · behind: short requests arriving "
                      f"within {setup['workload']['behind_s']:g} s after a long prompt · stall: the longest gap between two "
                      f"tokens of a request · ×: how many times better than {base} in the same round, above 1 is better · "
                      f"bhd: behind"
                      + (" · hit: prompt tokens found in the prefix cache" if _has_hits(results) else "")
                      + (f" · medians of {rounds} rounds, every round in the JSON" if rounds > 1 else ""))
    cols = [(f"TTFT\np50 {DOWN}", lambda r: _ms(r, "ttft_ms_p50")), (f"TTFT\np99 {DOWN}", lambda r: _ms(r, "ttft_ms_p99"))]
    if full:
        cols += [(f"short TTFT\np50 {DOWN}", lambda r: _ms(r, "short_ttft_ms_p50")),
                 (f"short TTFT\np99 {DOWN}", lambda r: _ms(r, "short_ttft_ms_p99")),
                 (f"long TTFT\np50 {DOWN}", lambda r: _ms(r, "long_ttft_ms_p50")),
                 (f"long TTFT\np99 {DOWN}", lambda r: _ms(r, "long_ttft_ms_p99"))]
    cols += [(f"behind\nTTFT {DOWN}", lambda r: _ms(r, "behind_long_ttft_ms_p50")),
             (f"ITL\np50 {DOWN}", lambda r: _ms(r, "itl_ms_p50")), (f"ITL\np99 {DOWN}", lambda r: _ms(r, "itl_ms_p99")),
             (f"stall\nmax {DOWN}", lambda r: _ms(r, "max_stall_ms")),
             (f"tok/s\n{UP}", lambda r: _fmt(r, "output_tok_per_s", ",.1f" if full else ",.0f"))]
    hits = _has_hits(results)
    if hits and full:
        cols.append((f"hit\n% {UP}", lambda r: _fmt(r, "prefix_hit_rate", ".1%")))
    if full:
        cols += [("output\ntokens", lambda r: _fmt(r, "output_tokens", ",d")), ("steps", lambda r: _fmt(r, "steps", ",d"))]
        labels = {"ttft_ms_p50": "TTFT p50", "ttft_ms_p99": "TTFT p99", "behind_long_ttft_ms_p50": "behind",
                  "long_ttft_ms_p50": "long TTFT", "itl_ms_p50": "ITL p50", "itl_ms_p99": "ITL p99",
                  "max_stall_ms": "stall", "output_tok_per_s": "tok/s"}
        keys = [k for k in labels if any(k in (r.get("factors") or {}) for r in results)]
        cols += [(f"× {labels[k]}\n{UP}", lambda r, k=k: _factor(r, k)) for k in keys]
    else:
        cols.append((f"× ITL\np99 {UP}", lambda r: _factor(r, "itl_ms_p99")))
        # the prefix-cache hit rate, when some spec reports one, in the place of the behind-long factor (--full: both)
        cols.append((f"hit\n% {UP}", lambda r: _fmt(r, "prefix_hit_rate", ".0%")) if hits else
                    (f"× bhd\nTTFT {UP}", lambda r: _factor(r, "behind_long_ttft_ms_p50")))
    t.add_column("engine", overflow="fold", min_width=14)
    for name, _ in cols:
        t.add_column(name, justify="right", no_wrap=True)
    for r in results:  # a spec's options one per line: m5_chunked:\nmax_num_batched_tokens=256,\n...
        t.add_row(r["engine"].replace(":", ":\n").replace(",", ",\n"), *(fn(r) for _, fn in cols))
    return t


# ----------------------------------------------------------------------------------------- attention


def _span(values: list[int]) -> str:
    return "/".join(str(v) for v in values)


def _describe_attention(setup: dict) -> str:
    w, shape, m = setup["workload"], setup["shape"], setup.get("machine", {})
    where = setup.get("device_name") or m.get("gpu") or f"{m.get('cpu', '?')}, {m.get('cores', '?')} cores"
    if not setup["device"].startswith("cuda"):
        where += f", {m.get('cores', '?')} cores, {setup.get('threads')} torch threads"
    limit = setup.get("memory_limit_gib")
    limit = f"{size_text(limit * 2**30)} ({setup['memory_limit_source']})" if limit else setup.get("memory_limit_source", "?")
    return (f"attention · {setup['model']}: one layer, {shape['heads']} heads over {shape['kv_heads']} KV heads, "
            f"head_dim {shape['head_dim']} · {setup['device']} {setup['dtype']} · {where} · prefill and decode at contexts "
            f"{_span(w['contexts'])}, decode batches {_span(w['batches'])} · blocks of {setup['block_size']}, shuffled · "
            f"backends {' '.join(setup['backends'])} · {setup['timing']} · memory limit {limit} · {setup.get('date', '')}")


def _sig(x: float | None) -> str:
    if x is None:
        return "–"
    return f"{x:,.0f}" if x >= 100 else f"{x:.1f}" if x >= 10 else f"{x:.2f}" if x >= 1 else f"{x:.3f}"


def _ms_cell(r: dict) -> str:
    if r["ms"] is not None:
        return _sig(r["ms"])
    return "OOM" if r["status"] in ("oom", "skipped") else r["status"]


def _times(r: dict, key: str) -> str:
    if r.get(key) is not None:
        return f"{r[key]:.2f}×" if r[key] >= 0.1 else f"{r[key]:.2g}×"
    if r["ms"] is None:
        return "–"
    return r.get("ratio_note") or "–"


def _peak_cell(r: dict) -> str:
    if r.get("peak_mib") is not None:
        return _sig(r["peak_mib"])
    if r.get("predicted_mib") is not None and r["status"] == "oom" and "predicted" in (r.get("reason") or ""):
        return f"pred. {_sig(r['predicted_mib'])}"
    return "–"


def naive_oom_sentence(report: dict) -> str:
    """Where naive ran out of memory (or was predicted to), in words, for the table's caption."""
    at = report.get("naive_out_of_memory_at") or {}
    if "naive" not in report["setup"]["backends"]:
        return "naive was not in this run"
    parts = []
    reasons = {(r["phase"], r["batch"]): r["reason"] for r in report.get("out_of_memory", [])
               if r["backend"] == "naive" and r["status"] == "oom"}
    if at.get("prefill") is not None:
        parts.append(f"prefill from N = {at['prefill']}: {reasons.get(('prefill', 1), 'out of memory')}")
    for batch, context in (at.get("decode") or {}).items():
        if context is not None:
            parts.append(f"decode at B = {batch} from N = {context}: {reasons.get(('decode', int(batch)), 'out of memory')}")
    if not parts:
        return "naive ran at every length (no out of memory)"
    return "naive " + "; ".join(parts)


def render_attention(report: dict) -> list[Table]:
    """Two tables: prefill (context × backend) and decode (context × batch × backend). Columns: median ms, naive's
    time over the backend's (× faster, same run), sdpa's likewise when a kernel backend ran, TFLOP/s (prefill)
    or GB/s (decode) and their % of the card's peak where it is known, and the attention's own peak memory."""
    setup, rows = report["setup"], report["results"]
    peaks = setup.get("peaks")
    kernels = any(b not in ("naive", "sdpa") for b in setup["backends"]) and "sdpa" in setup["backends"]
    where = setup.get("device_name") or setup["device"]
    tables = []
    for phase in ("prefill", "decode"):
        mine = [r for r in rows if r["phase"] == phase]
        if not mine:
            continue
        prefill = phase == "prefill"
        what = "1 sequence of N new tokens" if prefill else "B sequences of N - 1 cached + 1 new token"
        title = f"{phase}: {what} · {where} · {setup['dtype']}"
        pct = peaks is not None and (not prefill or setup["dtype"] in ("bfloat16", "float16"))
        caption = (f"{naive_oom_sentence(report)} · {UP} higher, {DOWN} lower is better · × naive: naive's median "
                   f"over the backend's, same run{' (× sdpa: sdpa’s)' if kernels else ''} · peak: its own extra memory, "
                   f"KV cache excluded")
        t = Table(box=box.SIMPLE_HEAD, pad_edge=False, title=title, title_justify="left", caption=caption,
                  caption_justify="left")
        cols: list[tuple[str, object]] = [("N", lambda r: f"{r['context']:,}")]
        if not prefill:
            cols.append(("B", lambda r: str(r["batch"])))
        cols += [("backend", lambda r: r["backend"]), (f"ms {DOWN}\nmedian", _ms_cell),
                 (f"× naive\n{UP}", lambda r: _times(r, "ratio"))]
        if kernels:
            cols.append((f"× sdpa\n{UP}", lambda r: "–" if r["ratio_to_sdpa"] is None else _times(r, "ratio_to_sdpa")))
        cols.append((f"TFLOP/s\n{UP}", lambda r: _sig(r["tflops"])) if prefill else (f"GB/s\n{UP}", lambda r: _sig(r["gbps"])))
        if pct:
            peak = f"{peaks['tflops_16bit']:g} TFLOP/s" if prefill else f"{peaks['hbm_gbps']:g} GB/s"
            label = f"{peaks['card']} {peak}"
            cols.append((f"% peak {UP}\n{label}", lambda r: "–" if r["pct_of_peak"] is None else f"{r['pct_of_peak']:.1f}%"))
        cols.append((f"peak MiB\n{DOWN}", _peak_cell))
        for name, _ in cols:
            t.add_column(name, justify="left" if name == "backend" else "right")
        previous = None
        for r in mine:
            key = r["context"]
            if previous is not None and key != previous:
                t.add_section()
            previous = key
            t.add_row(*(fn(r) for _, fn in cols))
        tables.append(t)
    return tables


# -------------------------------------------------------------------------------------- prefix cache


def _spec_cell(spec: str) -> str:
    """An engine spec one option per line (m6_prefix:\\nenable_prefix_caching=False), as in the online table."""
    return spec.replace(":", ":\n").replace(",", ",\n")


def _times_cell(x: float | None, lo: float | None = None, hi: float | None = None) -> str:
    if x is None:
        return "–"
    text = f"{x:,.1f}×" if x >= 10 else f"{x:.2f}×"
    return text if lo is None or hi is None or lo == hi else f"{text}\n{_sig(lo)}–{_sig(hi)}"


def render_prefix_ttft(report: dict) -> Table:
    """`prefix ttft`: per length and engine spec, the median TTFT of the prompt cached but for its last block, its
    min–max over the rounds, how many times sooner than the reference (an engine that does not cache, same round)
    and the prompt tokens the engine found cached and computed."""
    setup, rows = report["setup"], report["results"]
    rounds = setup.get("repeat", 1)
    t = Table(box=box.SIMPLE_HEAD, pad_edge=False, caption_justify="left",
              caption=f"{UP} higher is better · {DOWN} lower is better · TTFT of a prompt whose blocks but the last are "
                      f"cached, from add_request to the step that returns its token · × {setup.get('reference', '?')}: "
                      f"its TTFT over the engine's in the same round, median and min–max · hit: prompt tokens found "
                      f"cached · run: prompt tokens computed" + (f" · medians of {rounds} rounds" if rounds > 1 else ""))
    t.add_column("tokens", justify="right")
    t.add_column("engine", overflow="fold", min_width=14)  # a long spec folds, one option per line
    for name in (f"TTFT ms {DOWN}\nmed min–max", f"× ref {UP}\nmed min–max", "hit", f"run\n{DOWN}"):
        t.add_column(name, justify="right", no_wrap=True)
    previous = None
    for r in rows:
        if previous is not None and r["length"] != previous:
            t.add_section()
        previous = r["length"]
        spread = "" if len(r.get("ttft_ms_rounds", [])) < 2 else f"\n{_sig(r['ttft_ms_min'])}–{_sig(r['ttft_ms_max'])}"
        t.add_row(f"{r['length']:,}", _spec_cell(r["engine"]), _sig(r["ttft_ms"]) + spread,
                  _times_cell(r.get("speedup"), r.get("speedup_min"), r.get("speedup_max")),
                  _fmt(r, "hit_tokens", ",d"), _fmt(r, "computed_tokens", ",d"))
    return t


def render_multiturn(report: dict) -> Table:
    """`prefix multiturn`: a row per turn (and one for all turns), the engines side by side as A, B, ... (named in
    the caption): the hit rate of the turn's prompts, TTFT p50, the turn's wall time, and for each engine but the
    reference how many times sooner its TTFT p50 is than the reference's."""
    setup, results = report["setup"], report["results"]
    letters = [chr(ord("A") + i) for i in range(len(results))]
    ref = setup.get("reference", results[0]["engine"] if results else "?")
    rounds = setup.get("repeat", 1)
    names = " · ".join(f"{x} = {r['engine']}" for x, r in zip(letters, results, strict=True))
    t = Table(box=box.SIMPLE_HEAD, pad_edge=False, caption_justify="left",
              caption=f"{names} · {UP} higher is better · {DOWN} lower is better · hit: prompt tokens found in the prefix "
                      f"cache over the turn's prompt tokens · TTFT from submission, every conversation's turn at once · "
                      f"× TTFT: {ref}'s TTFT p50 over the engine's · all: every turn's requests, total wall time"
                      + (f" · medians of {rounds} rounds" if rounds > 1 else ""))
    others = [(x, r) for x, r in zip(letters, results, strict=True) if r["engine"] != ref]
    cols: list[tuple[str, object]] = [("turn", None), ("prompt\nmean", None)]
    cols += [(f"hit %\n{x} {UP}", (r, "hit_rate", ".0%")) for x, r in zip(letters, results, strict=True)]
    cols += [(f"TTFT p50\n{x} ms {DOWN}", (r, "ttft_ms_p50", "ms")) for x, r in zip(letters, results, strict=True)]
    cols += [(f"wall s\n{x} {DOWN}", (r, "wall_s", ".2f")) for x, r in zip(letters, results, strict=True)]
    cols += [(f"× TTFT\n{x} {UP}", (r, "ttft_speedup", "x")) for x, r in others]
    for name, _ in cols:
        t.add_column(name, justify="right", no_wrap=True)

    def cell(row: dict, key: str, spec: str) -> str:
        if spec == "ms":
            return _ms(row, key)
        if spec == "x":
            return _times_cell(row.get(key))
        return _fmt(row, key, spec)

    turns = len(results[0]["turns"]) if results else 0
    for i in range(turns):
        first = results[0]["turns"][i]
        t.add_row(str(first["turn"]), f"{first['prompt_len_mean']:,.0f}",
                  *(cell(how[0]["turns"][i], how[1], how[2]) for _, how in cols[2:]))
    t.add_section()
    t.add_row("all", "", *(cell(how[0], how[1], how[2]) for _, how in cols[2:]))
    return t


def render_kv_sweep(report: dict) -> Table:
    """`prefix kv-sweep`: a row per KV size and policy (and the caching-off baseline): hit rate, evictions,
    preemptions, output tok/s, lpm's tok/s over fcfs's at the same size, TTFT p50/p99."""
    setup, rows = report["setup"], report["results"]
    rounds = setup.get("repeat", 1)
    t = Table(box=box.SIMPLE_HEAD, pad_edge=False, caption_justify="left", collapse_padding=True,
              caption=f"{UP} higher is better · {DOWN} lower is better · blocks of {setup.get('block_size')} tokens · "
                      f"hit: prompt tokens found in the prefix cache (a preempted request queries again when it "
                      f"returns, and usually finds its own blocks) · evict: cached blocks reused for others · × fcfs: "
                      f"lpm's tok/s over fcfs's at the same size · off: caching off, the baseline"
                      + (f" · medians of {rounds} rounds" if rounds > 1 else ""))
    cols = [("KV\nblocks", lambda r: f"{r['kv_blocks']:,}"), ("KV\nMiB", lambda r: _sig(r["kv_mib"])),
            ("policy", lambda r: r["policy"] if r["prefix_caching"] else "off"),
            (f"hit %\n{UP}", lambda r: _fmt(r, "hit_rate", ".1%")), (f"evict\n{DOWN}", lambda r: _fmt(r, "evictions", ",d")),
            (f"pre-\nempt {DOWN}", lambda r: _fmt(r, "preemptions", ",d")),
            (f"tok/s\n{UP}", lambda r: _fmt(r, "output_tok_per_s", ",.0f")),
            (f"× fcfs\n{UP}", lambda r: _times_cell((r.get("vs_fcfs") or {}).get("output_tok_per_s"))),
            (f"TTFT ms\np50 {DOWN}", lambda r: _ms(r, "ttft_ms_p50")), (f"TTFT ms\np99 {DOWN}", lambda r: _ms(r, "ttft_ms_p99"))]
    for name, _ in cols:
        t.add_column(name, justify="left" if name == "policy" else "right", no_wrap=True)
    previous = None
    for r in rows:
        key = (r["kv_blocks"], r["prefix_caching"])
        if previous is not None and key != previous:
            t.add_section()
        previous = key
        t.add_row(*(fn(r) for _, fn in cols))
    return t
