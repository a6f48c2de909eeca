"""One call for a lent GPU machine: the GPU tests, then the GPU benchmarks, results written to a folder.

    python -m shared.tools.gpu_check OUT_DIR

Writes OUT_DIR/pytest_gpu.log, OUT_DIR/bench_latency.json and OUT_DIR/bench_throughput.json (Qwen3-0.6B
shape, random bf16 weights, every engine against HF generate in the same run). Later milestones add
their workloads here.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from shared.tools.milestones import ENGINES


def main(out: Path) -> int:
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "pytest_gpu.log", "w") as log:
        rc = subprocess.call([sys.executable, "-m", "pytest", "-m", "gpu", "-p", "no:nbmake", "-o",
                              "addopts=--import-mode=importlib", "tests", *ENGINES], stdout=log, stderr=subprocess.STDOUT)
    from shared.tools.bench import main as bench

    bench(["latency", "--engines", *ENGINES, "hf", "--model", "random:qwen3-0.6b", "--device", "cuda",
           "--num-requests", "5", "--prompt-len", "128", "--output-len", "128", "--out", str(out / "bench_latency.json")])
    batching = [e for e in ENGINES if e != "m1_basic"]  # m1 serves one request at a time: minutes on this workload
    bench(["throughput", "--engines", *batching, "hf", "--model", "random:qwen3-0.6b", "--device", "cuda",
           "--num-requests", "256", "--prompt-len", "100:1024", "--output-len", "100:1024", "--max-num-seqs", "64",
           "--max-model-len", "2048", "--out", str(out / "bench_throughput.json")])
    return rc


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m shared.tools.gpu_check OUT_DIR")
    sys.exit(main(Path(sys.argv[1])))
