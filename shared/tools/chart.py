"""One chart across the milestones: every engine in ENGINES plus HF on one throughput workload.

    python -m shared.tools.chart              # runs the workload (a few minutes on 2 cores), writes both files
    python -m shared.tools.chart --from-json  # replots docs/results/milestones_throughput.json

Writes docs/results/milestones_throughput.json (the `bench --out` report) and docs/results/milestones.png:
output tok/s, TTFT p50/p99, TPOT p50/p99 and KV utilisation per engine, the setup in the figure. A new
milestone adds its bars by being listed in shared/tools/milestones.py and rerunning this script. M7's bar is
the engine on a GPTQ 4-bit checkpoint of the model, quantized first (about 20 s).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from shared.tools.bench import describe
from shared.tools.bench import main as bench
from shared.tools.milestones import ENGINES

ROOT = Path(__file__).resolve().parents[2]
JSON = ROOT / "docs" / "results" / "milestones_throughput.json"
PNG = ROOT / "docs" / "results" / "milestones.png"
# tiny-qwen3 on CPU in fp32: about a minute for every engine with 3 rounds on 2 cores (m1 is half of it)
WORKLOAD = ["--model", "tiny-qwen3", "--device", "cpu", "--dtype", "float32", "--num-requests", "64",
            "--prompt-len", "32:128", "--output-len", "32:128", "--max-num-seqs", "32", "--max-model-len", "1024"]


GPTQ_LABEL = "tiny-qwen3 as GPTQ 4-bit g128 (64 calibration windows)"


def run(out: Path, repeat: int, threads: int | None) -> dict:
    """M7 runs a GPTQ 4-bit checkpoint of the same model (group size 128, calibrated on 64 windows of the
    training split), made here first; every other engine runs the full-precision model."""
    import tempfile

    from m7_gptq.quantize import main as quantize

    with tempfile.TemporaryDirectory() as tmp:
        gptq = str(Path(tmp) / "tiny-qwen3-gptq")
        if quantize(["--out", gptq, "--num-samples", "64", "--threads", str(threads or 1)]) != 0:
            raise SystemExit("quantizing tiny-qwen3 for the m7 bar failed")
        argv = ["throughput", "--engines", *ENGINES, "hf", *WORKLOAD, "--repeat", str(repeat), "--out", str(out),
                "--engine-model", f"m7_gptq={gptq}"]
        report = bench(argv + (["--threads", str(threads)] if threads else []))
    report["setup"]["engine_models"] = {"m7_gptq": GPTQ_LABEL}  # not the temporary directory's name
    out.write_text(json.dumps(report, indent=1))
    return report


def plot(report: dict, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rs = report["results"]
    names = [r["engine"] for r in rs]
    quantized = report["setup"].get("engine_models", {})
    # m1, m2, ... and hf: eight engines' names fit under their bars; m7 on its GPTQ checkpoint says so
    labels = [n.split("_")[0] + (" 4-bit" if n in quantized else "") for n in names]
    x = list(range(len(rs)))
    def color(name: str):  # a milestone keeps its shade as milestones are added
        if name not in ENGINES:
            return "tab:gray"
        return plt.cm.Blues(0.35 + 0.6 * ENGINES.index(name) / max(1, len(ENGINES) - 1))

    colors = [color(n) for n in names]
    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5))

    ax = axes[0, 0]
    tps = [r["output_tok_per_s"] for r in rs]
    err = [[t - r.get("output_tok_per_s_min", t) for t, r in zip(tps, rs, strict=True)],
           [r.get("output_tok_per_s_max", t) - t for t, r in zip(tps, rs, strict=True)]]
    ax.bar(x, tps, color=colors, yerr=err, capsize=4)
    for i, (t, r) in enumerate(zip(tps, rs, strict=True)):
        top = r.get("output_tok_per_s_max", t)  # above the error bar, not across it
        ax.annotate(f"{t:,.0f}\n{r.get('ratio', t / tps[0]):.2f}×", (i, top), ha="center", va="bottom",
                    fontsize=8, xytext=(0, 3), textcoords="offset points")
    highest = max(t + e for t, e in zip(tps, err[1], strict=True))
    ax.set(title=f"output tokens/s ↑ (median, bars: min–max; × {labels[0]})", ylabel="tokens/s", ylim=(0, 1.35 * highest))

    for ax, fig_key, title in ((axes[0, 1], "ttft_ms", "TTFT ↓ (ms, log scale)"),
                               (axes[1, 0], "tpot_ms", "TPOT ↓ (ms)")):
        for j, (q, shade) in enumerate(((50, 1.0), (99, 0.55))):
            vals = [r.get(f"{fig_key}_p{q}") for r in rs]
            xs = [i + (j - 0.5) * 0.38 for i in x]
            ax.bar([a for a, v in zip(xs, vals, strict=True) if v is not None], [v for v in vals if v is not None],
                   width=0.38, color=[c for c, v in zip(colors, vals, strict=True) if v is not None],
                   alpha=shade, edgecolor="black", linewidth=0.5, label=f"p{q}")
        ax.set(title=title, ylabel="ms")
        if fig_key == "ttft_ms":
            ax.set_yscale("log")
        ax.legend(fontsize=8)

    ax = axes[1, 1]
    util = [r.get("kv_mean_utilization") for r in rs]
    ax.bar([i for i, u in zip(x, util, strict=True) if u is not None], [100 * u for u in util if u is not None],
           color=[c for c, u in zip(colors, util, strict=True) if u is not None])
    for i, u in enumerate(util):
        ax.annotate("n/a" if u is None else f"{u:.1%}", (i, 0 if u is None else 100 * u), ha="center", va="bottom",
                    fontsize=8, xytext=(0, 3), textcoords="offset points")
    ax.set(title="KV utilisation ↑ (positions holding a token / reserved)", ylabel="%", ylim=(0, 110))

    for ax in axes.flat:
        ax.set_xticks(x, labels, fontsize=9)
        ax.set_xlim(-0.6, len(rs) - 0.4)
        ax.grid(axis="y", alpha=0.3)
    setup = report["setup"]
    fig.suptitle("FoloVLLM milestones on one throughput workload (HF: transformers generate, static batches)")
    fig.text(0.01, 0.005, "\n".join(_wrap(describe(setup), 170)), fontsize=7.5, va="bottom")
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=110)
    plt.close(fig)


def _wrap(text: str, width: int) -> list[str]:
    import textwrap

    return textwrap.wrap(text, width)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m shared.tools.chart", description=__doc__.split("\n")[0])
    ap.add_argument("--from-json", action="store_true", help="replot the saved JSON without running anything")
    ap.add_argument("--repeat", type=int, default=3, help="rounds of the engines interleaved (default 3)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: bench's default)")
    ap.add_argument("--json", type=Path, default=JSON)
    ap.add_argument("--png", type=Path, default=PNG)
    args = ap.parse_args(argv)
    if args.from_json:
        if not args.json.is_file():
            ap.error(f"{args.json} does not exist: run without --from-json first")
        report = json.loads(args.json.read_text())
    else:
        report = run(args.json, args.repeat, args.threads)
    plot(report, args.png)
    print(f"wrote {args.png}" + ("" if args.from_json else f" and {args.json}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
