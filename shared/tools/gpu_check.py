"""One call for a lent GPU machine: the GPU tests, the kernel micro-benchmark, then the engine benchmarks.

    python -m shared.tools.gpu_check OUT_DIR [--quick]

Writes into OUT_DIR: pytest_gpu.log; kernels.json (M3's paged decode kernel against the PyTorch reference,
Qwen3-0.6B head shape, bf16); bench_latency.json and bench_throughput.json (Qwen3-0.6B shape, random
bf16 weights, the engines against HF generate in the same run). Each part is sized to fit, with the
machine's start, in the 15 minutes of device time a session gets; `--quick` shrinks the workloads further.
Later milestones add their workloads here.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from shared.tools.milestones import ENGINES


def _step(name: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {name}", flush=True)


def main(out: Path, quick: bool = False) -> int:
    out.mkdir(parents=True, exist_ok=True)
    _step("GPU tests")
    with open(out / "pytest_gpu.log", "w") as log:
        rc = subprocess.call([sys.executable, "-m", "pytest", "-m", "gpu", "-p", "no:nbmake", "-p", "no:cacheprovider",
                              "-o", "addopts=--import-mode=importlib", "tests", *ENGINES], stdout=log, stderr=subprocess.STDOUT)
    print((out / "pytest_gpu.log").read_text().splitlines()[-1], flush=True)
    from shared.tools.bench import main as bench
    from shared.tools.kernel_bench import main as kernels

    _step("kernel micro-benchmark")
    kernels(["--out", str(out / "kernels.json"), *(["--contexts", "1024", "4096"] if quick else [])])
    _step("latency")
    bench(["latency", "--engines", *ENGINES, "hf", "--model", "random:qwen3-0.6b", "--device", "cuda",
           "--num-requests", "3", "--prompt-len", "128", "--output-len", "128", "--out", str(out / "bench_latency.json")])
    _step("throughput")
    batching = [e for e in ENGINES if e != "m1_basic"]  # m1 serves one request at a time: minutes on this workload
    n, hi = ("64", "256") if quick else ("128", "512")
    bench(["throughput", "--engines", *batching, "hf", "--model", "random:qwen3-0.6b", "--device", "cuda",
           "--num-requests", n, "--prompt-len", f"100:{hi}", "--output-len", f"100:{hi}", "--max-num-seqs", "64",
           "--max-model-len", "1024", "--repeat", "1", "--out", str(out / "bench_throughput.json")])
    _step("done")
    return rc


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if a != "--quick"]
    if len(args) != 1:
        sys.exit("usage: python -m shared.tools.gpu_check OUT_DIR [--quick]")
    sys.exit(main(Path(args[0]), quick="--quick" in sys.argv))
