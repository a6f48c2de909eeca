"""M7's GPTQ weights, measured: `python -m shared.tools.bench quant memory|ppl|decode ...`.

- `memory`: bytes of the decoder's linear layers and of the whole model as they sit in memory, in float32,
  bfloat16 and GPTQ 4-bit (group size `--group-size`; the rest of the model in float32 or bfloat16, loaded for
  the automatic kernel), and the checkpoint's size on disk. The 4-bit checkpoint is made with round-to-nearest:
  memory does not depend on how the codes were chosen.
- `ppl`: perplexity on held-out text (files the model never trained on and calibration never sees) for the
  full-precision model, RTN 4-bit and GPTQ at group sizes 128 and 32, with and without act-order; each
  checkpoint made by `m7_gptq.quantize` on `--num-samples` windows of the training split.
- `decode`: decode tokens/s at each batch size of `--batch-sizes`, the unquantized model (float32 and
  bfloat16 on m6) against the GPTQ checkpoint on m7 with each kernel (`GPTQ cpu_int4 + bfloat16`: the
  embeddings, norms and lm_head in bfloat16 around the 4-bit layers), round by round interleaved. Decode tok/s
  counts the steps that ran no prompt token (EngineStats.rates).

`--model random:qwen3-0.6b` measures the real Qwen3-0.6B shape with random weights (quantized by RTN:
GPTQ's calibration means nothing on random weights; memory and speed are the same). Every run prints a
table, and `--out NAME.json` writes it (a bare name goes to bench_results/), `--plot FILE.png` draws it.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from shared.sampling import SamplingParams
from shared.tools.bench.checks import BenchError
from shared.tools.bench.engines import _build_llm, resolve_bench_model
from shared.tools.bench.machine import machine_info

SCENARIOS = ("memory", "ppl", "decode")
PPL_CONFIGS = [  # (label, quantize flags); None: the full-precision model
    ("fp32", None), ("RTN g128", ["--method", "rtn"]), ("GPTQ g128", []), ("GPTQ g128 act-order", ["--desc-act"]),
    ("GPTQ g32", ["--group-size", "32"]), ("GPTQ g32 act-order", ["--group-size", "32", "--desc-act"]),
]


def parser() -> argparse.ArgumentParser:
    from shared.tools.bench.cli import _Parser

    ap = _Parser(prog="python -m shared.tools.bench quant", description=__doc__.split("\n\n")[0])
    ap.add_argument("scenario", choices=SCENARIOS)
    ap.add_argument("--model", default="tiny-qwen3", help="bundled name, directory, hub id, or random:<preset>")
    ap.add_argument("--group-size", type=int, default=128, help="memory and decode: the 4-bit checkpoint's groups")
    ap.add_argument("--num-samples", type=int, default=128, help="ppl: calibration windows of --seq-len tokens")
    ap.add_argument("--seq-len", type=int, default=512, help="ppl: tokens per calibration and evaluation window")
    ap.add_argument("--windows", type=int, default=64, help="ppl: held-out evaluation windows")
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 32], help="decode: sequences decoding at once")
    ap.add_argument("--prompt-len", type=int, default=16, help="decode: prompt tokens per sequence")
    ap.add_argument("--output-len", type=int, default=64, help="decode: tokens generated per sequence")
    ap.add_argument("--rounds", type=int, default=3, help="decode: rounds (engines interleaved); the median is kept")
    ap.add_argument("--kernels", nargs="+", default=None, help="decode: m7 kernels (default: the device's)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=None, help="write the report as JSON (a bare NAME.json goes to bench_results/)")
    ap.add_argument("--plot", default=None, help="draw the report into this PNG")
    return ap


# ------------------------------------------------------------------------------------------ helpers


def quantize(model: str, out: Path, flags: list[str], threads: int) -> float:
    """Run `python -m m7_gptq.quantize` in-process; returns its seconds."""
    from m7_gptq.quantize import cli_parser, run_quantize

    args = cli_parser().parse_args(["--model", model, "--out", str(out), "--overwrite", "--threads", str(threads), *flags])
    start = time.perf_counter()
    run_quantize(args, Console(stderr=True, quiet=True))
    return time.perf_counter() - start


def tensor_bytes(module: torch.nn.Module) -> int:
    """Bytes of every distinct parameter and buffer (a tied embedding counted once)."""
    seen, total = set(), 0
    for t in (*module.parameters(), *module.buffers()):
        if t is not None and id(t) not in seen:
            seen.add(id(t))
            total += t.numel() * t.element_size()
    return total


def linear_bytes(model: torch.nn.Module) -> int:
    """Bytes of the decoder layers' projections (q/k/v/o, gate/up/down): what GPTQ quantizes."""
    return sum(tensor_bytes(m) for name, m in model.model.layers.named_modules() if name.endswith("_proj"))


# ------------------------------------------------------------------------------------------ scenarios


def run_memory(model: str, group_size: int = 128, threads: int = 1) -> dict:
    path = resolve_bench_model(model, "float32")
    rows = []
    for dtype in ("float32", "bfloat16"):
        llm = _build_llm("m6_prefix", path, "cpu", dtype, max_model_len=256)
        m = llm.engine.model
        rows.append({"weights": dtype, "linear_bytes": linear_bytes(m), "model_bytes": tensor_bytes(m)})
        del llm, m
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "gptq"
        quantize(path, out, ["--method", "rtn", "--group-size", str(group_size)], threads)
        disk = sum(f.stat().st_size for f in out.glob("*.safetensors"))
        for dtype in ("float32", "bfloat16"):  # the rest of the model (embeddings, norms) in the engine's dtype
            llm = _build_llm("m7_gptq", str(out), "cpu", dtype, max_model_len=256)
            m = llm.engine.model
            rows.append({"weights": f"GPTQ g{group_size} + {dtype}", "linear_bytes": linear_bytes(m),
                         "model_bytes": tensor_bytes(m), "checkpoint_bytes": disk, "kernel": llm.engine.quant_kernel})
            del llm, m
    base = rows[0]
    for r in rows:
        r["linear_vs_fp32"] = r["linear_bytes"] / base["linear_bytes"]
        r["model_vs_fp32"] = r["model_bytes"] / base["model_bytes"]
    return {"scenario": "memory", "model": model, "group_size": group_size, "rows": rows}


def run_ppl(model: str, num_samples: int = 128, seq_len: int = 512, windows: int = 64, threads: int = 1) -> dict:
    from shared.corpus import held_out_texts, token_stream
    from shared.loader import load_model
    from shared.tokenizer import Tokenizer
    from shared.tools.perplexity import perplexity

    path = resolve_bench_model(model, "float32")
    full, config, resolved = load_model(path, torch.float32, "cpu")
    eos = config.eos_token_ids[0] if config.eos_token_ids else None
    tokens = token_stream(Tokenizer(resolved), held_out_texts(), windows * seq_len, eos)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for label, flags in PPL_CONFIGS:
            Console(stderr=True).print(f"[dim]{label} ...[/dim]")
            if flags is None:
                rows.append({"config": label, "ppl": perplexity(full, tokens, seq_len), "seconds": 0.0})
                continue
            out = Path(tmp) / label.replace(" ", "-")
            seconds = quantize(path, out, ["--num-samples", str(num_samples), "--seq-len", str(seq_len), *flags], threads)
            llm = _build_llm("m7_gptq", str(out), "cpu", "float32", max_model_len=seq_len, quant_kernel="torch")
            rows.append({"config": label, "ppl": perplexity(llm.engine.model, tokens, seq_len), "seconds": seconds})
    for r in rows:
        r["vs_fp32"] = r["ppl"] / rows[0]["ppl"] - 1
    return {"scenario": "ppl", "model": model, "eval_tokens": windows * seq_len, "calibration_samples": num_samples,
            "seq_len": seq_len, "rows": rows}


def run_decode(model: str, batch_sizes: list[int], prompt_len: int = 16, output_len: int = 64, rounds: int = 3,
               group_size: int = 128, device: str = "cpu", kernels: list[str] | None = None, threads: int = 1) -> dict:
    path = resolve_bench_model(model, "float32")
    cuda = device.startswith("cuda")
    kernels = kernels or (["triton", "torch"] if cuda else ["cpu_int4", "torch"])
    dense = ["bfloat16"] if cuda else ["float32", "bfloat16"]
    # (kernel, dtype of the rest of the model and of the activations); on CPU cpu_int4 also with bfloat16
    # around it, its own activation dtype, which is the fair match for the bfloat16 model
    quantized = [(k, d) for k in kernels for d in (["bfloat16"] if cuda else ["float32", "bfloat16"] if k == "cpu_int4"
                                                  else ["float32"])]
    max_len = prompt_len + output_len + 8
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "gptq"
        quantize(path, out, ["--method", "rtn", "--group-size", str(group_size)], threads)
        engines = {f"{d} (m6)": _build_llm("m6_prefix", path, device, d, max_model_len=max_len, enable_prefix_caching=False)
                   for d in dense}
        for k, d in quantized:
            engines[f"GPTQ {k} + {d} (m7)"] = _build_llm("m7_gptq", str(out), device, d, max_model_len=max_len,
                                                         quant_kernel=k, enable_prefix_caching=False)
        g = torch.Generator().manual_seed(0)
        results = {name: {b: [] for b in batch_sizes} for name in engines}
        for _ in range(rounds):
            for b in batch_sizes:
                prompts = [torch.randint(16, 4000, (prompt_len,), generator=g).tolist() for _ in range(b)]
                params = SamplingParams(temperature=0, max_tokens=output_len, ignore_eos=True)
                for name, llm in engines.items():
                    llm.engine.stats.reset()
                    llm.generate(prompts, params, use_tqdm=False)
                    results[name][b].append(llm.engine.stats.rates()[1])
    rows = []
    for name, by_batch in results.items():
        for b, rates in by_batch.items():
            rows.append({"engine": name, "batch": b, "decode_tok_s": statistics.median(rates), "rounds": rates})
    base = {r["batch"]: r["decode_tok_s"] for r in rows if r["engine"] == f"{dense[0]} (m6)"}
    for r in rows:
        r["vs_dense"] = r["decode_tok_s"] / base[r["batch"]]
    return {"scenario": "decode", "model": model, "device": device, "group_size": group_size, "prompt_len": prompt_len,
            "output_len": output_len, "rounds": rounds, "rows": rows}


# ------------------------------------------------------------------------------------------ report


def render(report: dict, console: Console) -> None:
    s = report["scenario"]
    t = Table(title=f"{s} · {report['model']}", title_justify="left")
    if s == "memory":
        for c in ("weights", "linear layers", "vs fp32", "whole model", "vs fp32", "checkpoint"):
            t.add_column(c, justify="left" if c == "weights" else "right")
        for r in report["rows"]:
            disk = f"{r['checkpoint_bytes'] / 2**20:,.1f} MiB" if "checkpoint_bytes" in r else ""
            t.add_row(r["weights"], f"{r['linear_bytes'] / 2**20:,.2f} MiB", f"{r['linear_vs_fp32']:.3f}",
                      f"{r['model_bytes'] / 2**20:,.2f} MiB", f"{r['model_vs_fp32']:.3f}", disk)
    elif s == "ppl":
        for c in ("weights", "perplexity", "vs fp32", "quantize s"):
            t.add_column(c, justify="left" if c == "weights" else "right")
        for r in report["rows"]:
            t.add_row(r["config"], f"{r['ppl']:.3f}", f"{r['vs_fp32']:+.2%}", f"{r['seconds']:.1f}")
    else:
        for c in ("engine", "batch", "decode tok/s", "vs dense"):
            t.add_column(c, justify="left" if c == "engine" else "right")
        for r in report["rows"]:
            t.add_row(r["engine"], str(r["batch"]), f"{r['decode_tok_s']:,.1f}", f"{r['vs_dense']:.2f}×")
    console.print(t)


def plot(report: dict, ax=None):
    """The report as a bar chart (memory, perplexity, or decode tok/s per batch size); returns the figure."""
    import matplotlib.pyplot as plt

    s, rows = report["scenario"], report["rows"]
    if ax is None:
        fig, ax = plt.subplots(figsize=(7, 3.2))
    else:
        fig = ax.figure
    if s == "memory":
        labels = [r["weights"] for r in rows]
        ax.barh(labels, [r["model_bytes"] / 2**20 for r in rows], color="tab:gray", label="whole model")
        ax.barh(labels, [r["linear_bytes"] / 2**20 for r in rows], color="tab:blue", label="linear layers")
        ax.set_xlabel("MiB in memory")
        ax.invert_yaxis()
        ax.legend()
    elif s == "ppl":
        ax.barh([r["config"] for r in rows], [r["ppl"] for r in rows], color="tab:blue")
        lo = min(r["ppl"] for r in rows)
        ax.set_xlim(lo * 0.98, max(r["ppl"] for r in rows) * 1.01)
        ax.set_xlabel("held-out perplexity (lower is better)")
        ax.invert_yaxis()
    else:
        engines = list(dict.fromkeys(r["engine"] for r in rows))
        batches = sorted({r["batch"] for r in rows})
        width = 0.8 / len(engines)
        for i, e in enumerate(engines):
            vals = [next(r["decode_tok_s"] for r in rows if r["engine"] == e and r["batch"] == b) for b in batches]
            ax.bar([j + i * width for j in range(len(batches))], vals, width, label=e)
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(batches))], [f"batch {b}" for b in batches])
        ax.set_ylabel("decode tok/s")
        ax.set_yscale("log")
        ax.legend(fontsize=8)
    ax.set_title(f"{s} · {report['model']}", fontsize=10, loc="left")
    fig.tight_layout()
    return fig


def main(argv: list[str] | None = None) -> dict:
    from shared.tools.bench.cli import guarded

    return guarded(_main, parser().parse_args(sys.argv[1:] if argv is None else argv))


def _main(args: argparse.Namespace) -> dict:
    import json

    torch.set_num_threads(args.threads)
    for name in ("num_samples", "seq_len", "windows", "prompt_len", "output_len", "rounds", "threads"):
        if getattr(args, name) < 1:
            raise BenchError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if min(args.batch_sizes) < 1:
        raise BenchError(f"--batch-sizes must be >= 1, got {min(args.batch_sizes)}")
    from shared.tools.bench.checks import check_model

    check_model(args.model)
    try:
        if args.scenario == "memory":
            report = run_memory(args.model, args.group_size, args.threads)
        elif args.scenario == "ppl":
            report = run_ppl(args.model, args.num_samples, args.seq_len, args.windows, args.threads)
        else:
            report = run_decode(args.model, args.batch_sizes, args.prompt_len, args.output_len, args.rounds,
                                args.group_size, args.device, args.kernels, args.threads)
    except ValueError as err:  # a bad model, group size or kernel: the engine's own message
        raise BenchError(str(err)) from None
    report["machine"] = machine_info(args.device)
    render(report, Console())
    if args.out:
        out = Path(args.out) if "/" in args.out else Path("bench_results") / args.out
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2) + "\n")
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        plot(report).savefig(args.plot, dpi=120)
    return report
