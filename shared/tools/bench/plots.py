"""Pictures of an online run (the dict `run_online` returns, or the JSON `--out` wrote), for notebooks and docs:
`plot_timeline` (what each engine computed, step by step, around the long prompts) and `plot_tradeoff` (TTFT
against ITL p99, one point per engine spec). matplotlib is imported only when a plot is asked for."""

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
