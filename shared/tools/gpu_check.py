"""One call for a lent GPU machine: the GPU tests, the kernel micro-benchmarks, then the engine benchmarks.

    python -m shared.tools.gpu_check OUT_DIR [--quick] [--steps tests attention ...]

Writes into OUT_DIR, step by step (each step's failure is printed with its traceback and the next step runs;
the exit status is the GPU tests' status, or 1 if a later step failed):

- tests       pytest_gpu.log: the gpu-marked tests of tests/ and every milestone (m3_paged, m4_flash, ...).
- kernels     kernels.json: M3's paged decode kernel against the PyTorch reference (shared/tools/kernel_bench.py).
- attention   attention.json: M4's attention backends, one layer of the Qwen3-0.6B shape in bf16, prefill and decode
              at contexts 512-8192 and decode batches 1/16/64 (shared/tools/bench/attention.py): naive, torch SDPA and
              the project's Triton kernel, time (ms, TFLOP/s, GB/s, % of the card's peak) and peak memory, each
              against naive in the same run, the card's name in the setup. Where flash-attn is importable,
              attention_flash.json adds it at blocks of 256 tokens (the pages it reads) beside sdpa and triton.
- latency     bench_latency.json: the last two milestones against HF generate, one request at a time.
- throughput  bench_throughput.json: the last two milestones against HF static batching, every request at once.
- online      bench_online.json: M4 against M5 (chunked prefill) on requests arriving over time, short ones decoding
              while long prompts of 2K-6K tokens arrive (shared/tools/bench/online.py): TTFT, ITL p99, the longest
              stall, throughput, on the Qwen3-0.6B shape in bf16.
- prefix      bench_prefix_ttft.json and bench_prefix_chat.json: M6's prefix cache on the Qwen3-0.6B shape in bf16: a
              prompt of 1K/4K tokens cached but for its last block against the same prompt uncached, and 128 requests
              sharing a 1,024-token system prompt through M5 and M6 (shared/tools/bench/prefix.py).
- quant       bench_quant_decode.json: M7's GPTQ 4-bit weights on the Qwen3-0.6B shape: decode tok/s at batch 1, 32
              and 64, bf16 on m6 against the 4-bit checkpoint on m7 with the Triton and torch kernels
              (shared/tools/bench/quant.py).

Sized to fit, with the machine's start, in the 15 minutes of device time a session gets; `--quick` shrinks
every workload (fewer contexts, batches and rounds, fewer requests) for a rerun.
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import time
import traceback
from pathlib import Path

from shared.tools.milestones import ENGINES

STEPS = ("tests", "kernels", "attention", "latency", "throughput", "online", "prefix", "quant")
MODEL = "random:qwen3-0.6b"


def _step(name: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {name}", flush=True)


def _tests(out: Path, quick: bool) -> int:
    with open(out / "pytest_gpu.log", "w") as log:
        rc = subprocess.call([sys.executable, "-m", "pytest", "-m", "gpu", "-p", "no:nbmake", "-p", "no:cacheprovider",
                              "-o", "addopts=--import-mode=importlib", "tests", *ENGINES],
                             stdout=log, stderr=subprocess.STDOUT)
    lines = (out / "pytest_gpu.log").read_text().splitlines()
    print(lines[-1] if lines else "(pytest wrote nothing)", flush=True)
    return rc


def _kernels(out: Path, quick: bool) -> None:
    from shared.tools.kernel_bench import main as kernels

    kernels(["--out", str(out / "kernels.json"), *(["--contexts", "1024", "4096"] if quick else [])])


def _attention(out: Path, quick: bool) -> None:
    from shared.tools.bench import main as bench

    contexts = ["512", "2048", "8192"] if quick else ["512", "1024", "2048", "4096", "8192"]
    batches = ["1", "64"] if quick else ["1", "16", "64"]
    common = ["attention", "--model", MODEL, "--device", "cuda", "--dtype", "bfloat16", "--contexts", *contexts,
              "--batches", *batches, "--repeat", "2" if quick else "3"]
    bench([*common, "--backends", "naive", "sdpa", "triton", "--out", str(out / "attention.json")])
    if importlib.util.find_spec("flash_attn") is not None and not quick:
        _step("attention with flash-attn (blocks of 256)")
        bench([*common, "--block-size", "256", "--backends", "sdpa", "triton", "flash-attn",
               "--out", str(out / "attention_flash.json")])


def _latency(out: Path, quick: bool) -> None:
    from shared.tools.bench import main as bench

    bench(["latency", "--engines", *ENGINES[-2:], "hf", "--model", MODEL, "--device", "cuda",
           "--num-requests", "2" if quick else "3", "--prompt-len", "128", "--output-len", "128",
           "--out", str(out / "bench_latency.json")])


def _throughput(out: Path, quick: bool) -> None:
    from shared.tools.bench import main as bench

    n, hi = ("64", "256") if quick else ("128", "512")
    bench(["throughput", "--engines", *ENGINES[-2:], "hf", "--model", MODEL, "--device", "cuda",
           "--num-requests", n, "--prompt-len", f"100:{hi}", "--output-len", f"100:{hi}", "--max-num-seqs", "64",
           "--max-model-len", "1024", "--repeat", "1", "--out", str(out / "bench_throughput.json")])


def _online(out: Path, quick: bool) -> None:
    from shared.tools.bench import main as bench

    n, rate = ("48", "8") if quick else ("128", "16")
    bench(["online", "--engines", "m4_flash", "m5_chunked", "--model", MODEL, "--device", "cuda",
           "--num-requests", n, "--rate", rate, "--output-len", "128:256", "--long-prompts", "6", "--long-len", "2000:6000",
           "--max-num-seqs", "64", "--out", str(out / "bench_online.json")])


def _prefix(out: Path, quick: bool) -> None:
    from shared.tools.bench import main as bench

    rounds, n = ("3", "64") if quick else ("5", "128")
    bench(["prefix", "ttft", "--engines", "m6_prefix", "m6_prefix:enable_prefix_caching=False", "--model", MODEL,
           "--device", "cuda", "--lengths", "1024", "4096", "--repeat", rounds, "--out", str(out / "bench_prefix_ttft.json")])
    bench(["throughput", "--engines", "m5_chunked", "m6_prefix", "--model", MODEL, "--device", "cuda", "--prefix-len", "1024",
           "--num-requests", n, "--prompt-len", "32:128", "--output-len", "32:64", "--max-num-seqs", "64",
           "--max-model-len", "2048", "--repeat", "1", "--out", str(out / "bench_prefix_chat.json")])


def _quant(out: Path, quick: bool) -> None:
    from shared.tools.bench import main as bench

    rounds, output = ("2", "32") if quick else ("3", "128")
    bench(["quant", "decode", "--model", MODEL, "--device", "cuda", "--batch-sizes", "1", "32", "64",
           "--output-len", output, "--rounds", rounds, "--out", str(out / "bench_quant_decode.json")])


RUNNERS = {"tests": _tests, "kernels": _kernels, "attention": _attention, "latency": _latency, "throughput": _throughput,
           "online": _online, "prefix": _prefix, "quant": _quant}


def main(out: Path, quick: bool = False, steps: tuple[str, ...] = STEPS) -> int:
    out.mkdir(parents=True, exist_ok=True)
    rc = 0
    for name in steps:
        _step(name)
        try:
            result = RUNNERS[name](out, quick)
            if name == "tests":
                rc = result
        except SystemExit as err:  # bench's one-line errors exit 2: report, go on
            print(f"{name}: exited with status {err.code}", flush=True)
            rc = rc or 1
        except Exception:
            traceback.print_exc()
            sys.stderr.flush()
            rc = rc or 1
    _step("done")
    return rc


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m shared.tools.gpu_check", description=__doc__.split("\n")[0])
    ap.add_argument("out", type=Path, help="the folder the logs and JSON results go to")
    ap.add_argument("--quick", action="store_true", help="smaller workloads, for a rerun")
    ap.add_argument("--steps", nargs="+", choices=STEPS, default=list(STEPS), help=f"default: all of {' '.join(STEPS)}")
    return ap


if __name__ == "__main__":
    args = parser().parse_args()
    import torch

    if not torch.cuda.is_available():
        sys.exit("error: gpu_check runs on a machine with a CUDA GPU")
    sys.exit(main(args.out, quick=args.quick, steps=tuple(args.steps)))
