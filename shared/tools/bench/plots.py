"""Pictures of an online run (the dict `run_online` returns, or the JSON `--out` wrote), for notebooks and docs:
`plot_timeline` (what each engine computed, step by step, around the long prompts) and `plot_tradeoff` (TTFT
against ITL p99, one point per engine spec); and of the prefix cache's scenarios (prefix.py): `plot_prefix_ttft`,
`plot_multiturn`, `plot_hit_rate_vs_kv`. matplotlib is imported only when a plot is asked for."""

from __future__ import annotations

from shared.tools.bench.checks import BenchError

PROMPT_COLOR, DECODE_COLOR, LONG_COLOR = "tab:orange", "tab:blue", "tab:red"


def _pick(report: dict, specs: list[str] | None) -> list[dict]:
    by = {r["engine"]: r for r in report["results"]}
    if specs is None:
        return list(by.values())
    missing = [s for s in specs if s not in by]
    if missing:
        raise BenchError(f"no result for {', '.join(map(repr, missing))}: the run has {', '.join(by)}")
    return [by[s] for s in specs]


def plot_timeline(report: dict, specs: list[str] | None = None, ax=None, repetition: int = 0):
    """One panel per engine spec (all by default): a bar per step, from its start (seconds since the replay began)
    as wide as it took, its prompt(-chunk) tokens and decode tokens stacked; dashed red lines where a long prompt
    arrived. A long prompt run whole shows as one wide, tall bar with no decode beside it: the stall chunked prefill
    removes. `ax`: an Axes (one spec) or a sequence of Axes (one per spec) to draw into. Returns the figure."""
    import matplotlib.pyplot as plt

    results = _pick(report, specs)
    if ax is None:
        fig, axes = plt.subplots(len(results), 1, sharex=True, squeeze=False, figsize=(10, 2.4 * len(results)))
        axes = list(axes[:, 0])
    else:
        axes = list(ax.flat) if hasattr(ax, "flat") else list(ax) if isinstance(ax, (list, tuple)) else [ax]
        if len(axes) != len(results):
            raise BenchError(f"{len(axes)} axes for {len(results)} engine specs")
        fig = axes[0].figure
    for a, r in zip(axes, results, strict=True):
        rep = r["repetitions"][repetition]
        tl = rep["timeline"]
        a.bar(tl["start_s"], tl["prefill_tokens"], width=tl["duration_s"], align="edge", color=PROMPT_COLOR,
              label="prompt tokens", linewidth=0)
        a.bar(tl["start_s"], tl["decode_tokens"], width=tl["duration_s"], bottom=tl["prefill_tokens"], align="edge",
              color=DECODE_COLOR, label="decode tokens", linewidth=0)
        for i, t in enumerate(rep["long_arrivals_s"]):
            a.axvline(t, color=LONG_COLOR, linestyle="--", linewidth=1, label="long prompt arrives" if i == 0 else None)
        itl = r.get("itl_ms_p99")
        a.set_title(r["engine"] + (f"  ·  ITL p99 {itl:.1f} ms" if itl is not None else ""), fontsize=9, loc="left")
        a.set_ylabel("tokens / step")
    axes[-1].set_xlabel("seconds since the replay began; bar width = step duration")
    axes[0].legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    return fig


def plot_tradeoff(report: dict, x: str = "ttft_ms_p50", y: str = "itl_ms_p99", ax=None):
    """One point per engine spec, annotated with its label: `x` (TTFT p50 by default; `long_ttft_ms_p99` for the long
    prompts' p99, or any figure of the results) against `y` (ITL p99). Down and left is better. Returns the figure."""
    import matplotlib.pyplot as plt

    results = report["results"]
    points = [(r[x], r[y], r["engine"]) for r in results if r.get(x) is not None and r.get(y) is not None]
    if not points:
        raise BenchError(f"no engine has both {x} and {y}")
    if ax is None:
        fig, ax = plt.subplots(figsize=(6, 4.5))
    else:
        fig = ax.figure
    ax.scatter([p[0] for p in points], [p[1] for p in points], color=DECODE_COLOR, zorder=3)
    for px, py, label in points:
        ax.annotate(label.replace(":", ":\n").replace(",", ",\n"), (px, py), textcoords="offset points", xytext=(6, 4),
                    fontsize=8)
    names = {"ttft_ms_p50": "TTFT p50 (ms)", "ttft_ms_p99": "TTFT p99 (ms)", "long_ttft_ms_p50": "long prompts' TTFT p50 (ms)",
             "long_ttft_ms_p99": "long prompts' TTFT p99 (ms)", "behind_long_ttft_ms_p50": "TTFT p50 behind a long prompt (ms)",
             "itl_ms_p99": "ITL p99 (ms)", "itl_ms_p50": "ITL p50 (ms)", "max_stall_ms": "longest stall (ms)"}
    ax.set_xlabel(names.get(x, x) + " ↓")
    ax.set_ylabel(names.get(y, y) + " ↓")
    ax.set_title("each engine spec: lower left is better", fontsize=9, loc="left")
    ax.grid(True, alpha=0.3)
    ax.margins(0.25)  # room for the labels
    fig.tight_layout()
    return fig


# -------------------------------------------------------------------------------------- prefix cache


def _plain_log_ticks(axis) -> None:
    """Tick labels of a log axis as plain numbers (12, 100, 1,000), not powers of ten."""
    from matplotlib.ticker import FuncFormatter

    plain = FuncFormatter(lambda v, _: f"{v:,.0f}" if v >= 10 else f"{v:g}")
    axis.set_major_formatter(plain)
    axis.set_minor_formatter(plain)


def _save(fig, path) -> None:
    if path is not None:
        fig.savefig(path, dpi=150, bbox_inches="tight")


def _check_scenario(report: dict, name: str) -> None:
    got = report.get("setup", {}).get("workload", {}).get("name")
    if got != name:
        raise BenchError(f"expected the JSON of `bench {name.replace('-', ' ', 1)}`, got a {got!r} run")


def plot_hit_rate_vs_kv(report: dict, path=None, x: str = "blocks"):
    """`prefix kv-sweep`: two panels against the KV size (`x`: "blocks", or "mib" for MiB; log scale): the prefix
    hit rate, and output tok/s, one line per scheduling policy; the caching-off baseline as a dashed line in the
    tok/s panel. Saved to `path` when given. Returns the figure."""
    import matplotlib.pyplot as plt

    _check_scenario(report, "prefix-kv-sweep")
    if x not in ("blocks", "mib"):
        raise BenchError(f"x must be 'blocks' or 'mib', got {x!r}")
    key = "kv_blocks" if x == "blocks" else "kv_mib"
    rows = report["results"]
    fig, (hit_ax, tps_ax) = plt.subplots(1, 2, figsize=(11, 4))
    for policy, color in zip(report["setup"]["workload"]["policies"], ("tab:blue", "tab:orange", "tab:green"), strict=False):
        mine = sorted((r for r in rows if r["prefix_caching"] and r["policy"] == policy), key=lambda r: r[key])
        xs = [r[key] for r in mine]
        hit_ax.plot(xs, [100 * r["hit_rate"] for r in mine], marker="o", color=color, label=policy)
        tps_ax.plot(xs, [r["output_tok_per_s"] for r in mine], marker="o", color=color, label=policy)
    for r in rows:
        if not r["prefix_caching"]:
            tps_ax.axhline(r["output_tok_per_s"], color="gray", linestyle="--", linewidth=1,
                           label=f"caching off ({r['kv_blocks']:,} blocks)")
    unit = f"KV cache (blocks of {report['setup'].get('block_size')} tokens)" if x == "blocks" else "KV cache (MiB)"
    sizes = sorted({r[key] for r in rows})
    for a, label in ((hit_ax, "prefix hit rate (%) ↑"), (tps_ax, "output tok/s ↑")):
        a.set_xscale("log", base=2)
        a.set_xticks(sizes, [f"{v:,.0f}" if v >= 10 else f"{v:.2g}" for v in sizes])
        a.minorticks_off()
        a.set_xlabel(unit)
        a.set_ylabel(label)
        a.grid(True, alpha=0.3)
        a.legend(fontsize=8)
    hit_ax.set_ylim(0, 100)
    hit_ax.set_title("hit rate against KV memory", fontsize=9, loc="left")
    tps_ax.set_title("throughput against KV memory", fontsize=9, loc="left")
    fig.tight_layout()
    _save(fig, path)
    return fig


def plot_multiturn(report: dict, path=None):
    """`prefix multiturn`: two panels against the turn: TTFT p50 per engine spec (log scale), and the hit rate of
    the turn's prompts per engine spec. Saved to `path` when given. Returns the figure."""
    import matplotlib.pyplot as plt

    _check_scenario(report, "prefix-multiturn")
    fig, (ttft_ax, hit_ax) = plt.subplots(1, 2, figsize=(11, 4))
    for r in report["results"]:
        turns = [t["turn"] for t in r["turns"]]
        label = r["engine"].replace(":", ":\n")
        ttft_ax.plot(turns, [t["ttft_ms_p50"] for t in r["turns"]], marker="o", label=label)
        hit_ax.plot(turns, [100 * t["hit_rate"] for t in r["turns"]], marker="o", label=label)
    ttft_ax.set_yscale("log")
    _plain_log_ticks(ttft_ax.yaxis)
    ttft_ax.set_ylabel("TTFT p50 (ms) ↓")
    hit_ax.set_ylabel("prefix hit rate of the turn's prompts (%) ↑")
    hit_ax.set_ylim(0, 100)
    for a in (ttft_ax, hit_ax):
        a.set_xlabel("turn")
        a.xaxis.get_major_locator().set_params(integer=True)
        a.grid(True, alpha=0.3)
        a.legend(fontsize=8)
    w = report["setup"]["workload"]
    ttft_ax.set_title(f"{w['conversations']} conversations, every turn at once", fontsize=9, loc="left")
    fig.tight_layout()
    _save(fig, path)
    return fig


def plot_prefix_ttft(report: dict, path=None):
    """`prefix ttft`: grouped bars, one group per prompt length and one bar per engine spec, the median TTFT on a
    log scale with its min–max over the rounds as an error bar, each bar labelled with its ms. Saved to `path` when
    given. Returns the figure."""
    import matplotlib.pyplot as plt

    _check_scenario(report, "prefix-ttft")
    rows = report["results"]
    lengths = list(dict.fromkeys(r["length"] for r in rows))
    specs = list(dict.fromkeys(r["engine"] for r in rows))
    by = {(r["length"], r["engine"]): r for r in rows}
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(lengths) * len(specs)), 4.5))
    width = 0.8 / len(specs)
    for j, spec in enumerate(specs):
        xs = [i + (j - (len(specs) - 1) / 2) * width for i in range(len(lengths))]
        mine = [by[(n, spec)] for n in lengths]
        med = [r["ttft_ms"] for r in mine]
        err = [[m - r["ttft_ms_min"] for m, r in zip(med, mine, strict=True)],
               [r["ttft_ms_max"] - m for m, r in zip(med, mine, strict=True)]]
        bars = ax.bar(xs, med, width=width, yerr=err, capsize=3, label=spec.replace(":", ":\n"))
        ax.bar_label(bars, labels=[f"{m:,.1f}" if m < 100 else f"{m:,.0f}" for m in med], fontsize=7, padding=2)
    ax.set_yscale("log")
    _plain_log_ticks(ax.yaxis)
    ax.set_xticks(range(len(lengths)), [f"{n:,} tokens" for n in lengths])
    ax.set_ylabel("TTFT (ms), median of the rounds ↓")
    ax.set_title("a prompt cached but for its last block, against the same prompt uncached", fontsize=9, loc="left")
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    _save(fig, path)
    return fig


def plot_serve(reports: dict[str, dict], path=None):
    """The serving load runs (`bench serve --out` JSONs) side by side: for each run (title -> report), TTFT, ITL and
    end-to-end latency at p50, p90 and p99 per engine, on log scales. Returns the figure."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, NullFormatter

    figures = (("ttft_ms", "TTFT"), ("itl_ms", "ITL"), ("e2e_ms", "end to end"))
    fig, axes = plt.subplots(len(reports), len(figures), figsize=(11, 3.1 * len(reports)), squeeze=False)
    for row, (title, report) in zip(axes, reports.items(), strict=True):
        for a, (key, name) in zip(row, figures, strict=True):
            for r in report["results"]:
                a.plot([50, 90, 99], [r[f"{key}_p{q}"] for q in (50, 90, 99)], marker="o", label=r["engine"])
            a.set_yscale("log")
            a.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))
            a.yaxis.set_minor_formatter(NullFormatter())
            a.set_xticks([50, 90, 99], ["p50", "p90", "p99"])
            a.set_title(f"{title}: {name}", fontsize=9)
            a.set_ylabel("ms")
            a.grid(alpha=0.3, which="both")
        row[0].legend(fontsize=8)
    fig.tight_layout()
    _save(fig, path)
    return fig
