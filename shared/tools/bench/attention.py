"""The attention workload: one attention layer of the model's shape, per M4 backend, at growing contexts.

    python -m shared.tools.bench attention                           # tiny-qwen3's shape, naive and sdpa on CPU
    python -m shared.tools.bench attention --model random:qwen3-0.6b --contexts 512 2048 8192 --out attn.json

Two cases per context N:

- prefill: one sequence of N fresh tokens (start 0): the causal N x N attention of a prompt;
- decode at batch B: B sequences, each with N - 1 cached positions (random values) and one new token.

The K/V sit in a paged cache (m4_flash/kv_cache.py) on shuffled blocks, so that block tables are not
contiguous, as in a serving engine after a while. What is timed is `backend.forward(q, k, v, 0, metadata)`
of one layer: the write of the new K/V into the cache by slot mapping, then attention, as the engine calls it.
The metadata (block tables, slot mapping, seq_lens) is built once per case, outside the timed region, and so
is the per-step host work the engine does once for all layers: the gathering backends' `gather_index` and
the kernel's query tiles are cached on the metadata by the warm-up call, as layer 0 caches them for layers
1 .. L-1. A timed call is therefore what every layer but the first costs.

Time: a warm-up call per backend, then `repeat` rounds with the backends interleaved (A B A B ...); the
median over the rounds. On CPU a round times enough calls to last `min_round_s`; on CUDA a round is one
`triton.testing.do_bench` (median, L2 flushed between calls), or synchronised wall time without triton.
Each backend's ratio is naive's median time over its own: "x faster", both measured in the same run.

Memory: the attention's own extra peak (the KV cache, q, k and v excluded), measured in a separate call,
since profiling slows a call down. CUDA: max_memory_allocated after reset_peak_memory_stats, minus what
was allocated before. CPU, which has no allocator statistics: torch.profiler's memory events, whose
running sum over time peaks at the most the call held at once (`cpu_peak_bytes`).

Out of memory: before a backend runs a case its peak is predicted (`predict_peak_bytes`, calibrated on
CPU against the measured peaks: naive materialises two [heads, Tq, Tk] float32 score matrices at once,
plus the K/V it gathers and repeats for GQA); a backend whose prediction exceeds the limit is skipped
with the reason "out of memory (predicted X GiB > limit Y GiB)". The limit is `memory_limit_gib`, by
default the free CUDA memory (read once the case's cache is allocated) or half of the machine's RAM. An
out-of-memory error raised by the run is caught too, recorded at that length, and the larger contexts of
that backend (and batch) are skipped. `naive_out_of_memory_at` in the result says at what length naive
ran out of memory, per phase (and per batch for decode).

Throughput: prefill counts the causal FLOPs, 2 matmuls x 2 x heads x head_dim x N(N+1)/2, as TFLOP/s;
decode counts the K/V bytes that must be read at least once, B x N x kv_heads x head_dim x 2 x element size,
as GB/s (q and the output are negligible). On a card listed in machine.py's GPU_PEAKS, each is also given
as a percentage of the card's peak (the TFLOP/s one for bf16/fp16 only: fp32 has another peak).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import statistics
import time
from collections.abc import Callable

import torch
from rich.console import Console

from shared.config import DTYPES, PRESETS, ModelConfig
from shared.tools.bench.checks import BenchError, check_model
from shared.tools.bench.machine import device_name, gpu_peaks, machine_info, total_memory_bytes
from shared.tools.bench.progress import Reporter

BACKEND_NAMES = ("naive", "sdpa", "triton", "flash-attn")
DEFAULT_CONTEXTS = (512, 1024, 2048, 4096, 8192)
DEFAULT_BATCHES = (1, 16, 64)
DEFAULT_REPEAT = 5
GIB, MIB = 2**30, 2**20


# ---------------------------------------------------------------------------------------------- the layer


def attention_config(model: str) -> ModelConfig:
    """One layer of `model`'s attention shape: heads, KV heads and head_dim from its config.json, or from
    shared/config.py PRESETS for `random:<preset>` (no weights are needed, nor written)."""
    check_model(model)
    if model.startswith("random:"):
        cfg = ModelConfig(**PRESETS[model.split(":", 1)[1]])
    else:
        from shared.loader import ModelFormatError, resolve_model

        try:
            cfg = ModelConfig.from_dir(resolve_model(model))
        except ModelFormatError as err:
            raise BenchError(str(err)) from None
    return dataclasses.replace(cfg, num_hidden_layers=1)


def _element_size(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


# ------------------------------------------------------------------------------------------ the backends


def check_backends(backends: list[str], device: str, block_size: int, dtype: torch.dtype) -> list[str]:
    """BenchError for a backend that cannot run here (one line that says why); the warnings to print otherwise."""
    from m4_flash.attention import resolve_backend_name

    unknown = [b for b in backends if b not in BACKEND_NAMES]
    if unknown:
        raise BenchError(f"unknown backend {', '.join(map(repr, unknown))}: choose from {' '.join(BACKEND_NAMES)}")
    if not backends:
        raise BenchError("no backends given")
    if len(set(backends)) < len(backends):
        raise BenchError(f"a backend is named twice in --backends {' '.join(backends)}")
    warnings = []
    for name in backends:
        if name == "triton" and not device.startswith("cuda"):
            if os.environ.get("TRITON_INTERPRET") != "1":
                raise BenchError("--backends triton runs on CUDA; on CPU only in Triton's interpreter (set TRITON_INTERPRET=1: "
                                 "very slow, and its times say nothing about the kernel)")
            warnings.append("triton on CPU runs in Triton's interpreter (TRITON_INTERPRET=1): its times say nothing "
                            "about the kernel's speed on a GPU")
        try:
            resolve_backend_name(name, device, block_size, dtype)
        except ValueError as err:  # (the engine's hint to use 'auto' does not apply here)
            raise BenchError(f"--backends {name}: {str(err).split('; use ')[0]}") from None
    return warnings


def default_backends(device: str, block_size: int, dtype: torch.dtype) -> tuple[list[str], list[str]]:
    """CPU: naive sdpa. CUDA: naive sdpa triton, and flash-attn where it is importable and the cache suits it
    (blocks of a multiple of 256 tokens, bf16/fp16). Returns (backends, notes on what was left out and why)."""
    from m4_flash.attention import FLASH_ATTN_BLOCK_MULTIPLE, flash_attn_available, triton_available

    if not device.startswith("cuda"):
        return ["naive", "sdpa"], []
    backends, notes = ["naive", "sdpa"], []
    if triton_available():
        backends.append("triton")
    else:
        notes.append("triton left out: the triton package is not installed")
    if flash_attn_available():
        if block_size % FLASH_ATTN_BLOCK_MULTIPLE:
            notes.append(f"flash-attn left out: it reads a paged cache in blocks of a multiple of {FLASH_ATTN_BLOCK_MULTIPLE} "
                         f"tokens, and --block-size is {block_size}")
        elif dtype not in (torch.float16, torch.bfloat16):
            notes.append(f"flash-attn left out: it computes in float16 or bfloat16, not {dtype}")
        else:
            backends.append("flash-attn")
    return backends, notes


# ------------------------------------------------------------------------------------------- the memory


@contextlib.contextmanager
def _quiet_stderr_fd():
    """Silence file descriptor 2 (kineto prints a line at every profiler start and stop); Python's own
    sys.stderr writes are not affected once the block ends."""
    try:
        saved = os.dup(2)
    except OSError:
        yield
        return
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def cpu_peak_bytes(fn: Callable[[], object]) -> int:
    """The most bytes `fn` held at once on the CPU: torch.profiler's memory events (+ for an allocation, - for a
    free), summed in time order; the running sum's maximum. The profiler sees no free of a block allocated before
    it started, so the result is the peak of what `fn` itself allocated (what it freed of older memory aside)."""
    from torch.profiler import ProfilerActivity, profile

    prof = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
    with _quiet_stderr_fd():
        prof.__enter__()
    try:
        fn()
    finally:
        with _quiet_stderr_fd():
            prof.__exit__(None, None, None)
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
                    if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU)
    held = peak = 0
    for _, nbytes in events:
        held += nbytes
        peak = max(peak, held)
    return peak


def cuda_peak_bytes(fn: Callable[[], object], device: str) -> int:
    """The most bytes `fn` held at once on the GPU: max_memory_allocated after a reset, minus what was
    allocated before it began."""
    dev = torch.device(device)
    torch.cuda.synchronize(dev)
    base = torch.cuda.memory_allocated(dev)
    torch.cuda.reset_peak_memory_stats(dev)
    fn()
    torch.cuda.synchronize(dev)
    return torch.cuda.max_memory_allocated(dev) - base


def peak_bytes(fn: Callable[[], object], device: str) -> int:
    return cuda_peak_bytes(fn, device) if device.startswith("cuda") else cpu_peak_bytes(fn)


def predict_peak_bytes(backend: str, seqs: list[tuple[int, int]], cfg: ModelConfig, dtype: torch.dtype) -> int:
    """What one call of `backend` will hold at its peak over the cache, q, k and v, for sequences of
    (new tokens Tq, positions Tk). Calibrated on CPU against `cpu_peak_bytes` (within a few per cent for
    naive and sdpa at the shapes of this workload):

    naive   the gathered K/V and the output; per sequence, K/V in float32 repeated for GQA, two
            [heads, Tq, Tk] float32 score matrices alive at once (each op makes a new one), the causal mask
            and the float32 product; float copies of q/k/v/out when the dtype is not float32.
    sdpa    the gathered K/V, the output and SDPA's own output (its workspace is per tile: small).
    triton, flash-attn   the output (and flash-attn's log-sum-exp): K/V are read in place.
    """
    h, kvh, d = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
    e, f32 = _element_size(dtype), 4
    tokens = sum(tq for tq, _ in seqs)
    out = tokens * h * d * e
    if backend in ("triton", "flash-attn"):
        return out + (tokens * h * f32 if backend == "flash-attn" else 0)
    gathered = 2 * sum(tk for _, tk in seqs) * kvh * d * e
    if backend == "sdpa":
        return gathered + out + max(tq * h * d * max(e, f32) for tq, _ in seqs)
    per_seq = []
    for tq, tk in seqs:
        scores = h * tq * tk * f32
        held = 2 * h * tk * d * f32 + 2 * scores + tq * tk + h * tq * d * f32
        if e != f32:
            held += h * tq * d * f32 * 2 + kvh * tk * d * f32  # q and the result in float32, one K/V float copy at a time
        per_seq.append(held)
    return gathered + out + max(per_seq)


def memory_limit(device: str, gib: float | None) -> tuple[int | None, str]:
    """(bytes, where it comes from). CUDA without --memory-limit-gib: None, read per case from the free memory."""
    if gib is not None:
        return int(gib * GIB), "--memory-limit-gib"
    if device.startswith("cuda"):
        return None, "free CUDA memory (torch's unused cache included) once the case's cache is allocated"
    return total_memory_bytes() // 2, "half of the machine's RAM"


def size_text(nbytes: float) -> str:
    """1.23 GiB, or 456.7 MiB below a GiB."""
    if nbytes >= GIB:
        return f"{nbytes / GIB:.2f} GiB"
    return f"{nbytes / MIB:.1f} MiB" if nbytes >= MIB else f"{nbytes / MIB:.3f} MiB"


def _cuda_free_bytes(device: str) -> int:
    """Free device memory, counting what torch's caching allocator holds but does not use (it reuses that first)."""
    dev = torch.device(device)
    return torch.cuda.mem_get_info(dev)[0] + torch.cuda.memory_reserved(dev) - torch.cuda.memory_allocated(dev)


def _is_oom(err: BaseException) -> bool:
    if isinstance(err, torch.OutOfMemoryError):
        return True
    text = str(err).lower()
    signs = ("out of memory", "not enough memory", "cannot allocate memory")
    return isinstance(err, RuntimeError) and any(s in text for s in signs)


def _free_after_oom(device: str) -> None:
    import gc

    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()


# ---------------------------------------------------------------------------------------------- the cases


@dataclasses.dataclass(frozen=True)
class Case:
    """prefill: one sequence of `context` fresh tokens; decode: `batch` sequences of context - 1 cached positions
    and one new token each."""

    phase: str
    context: int
    batch: int = 1

    @property
    def seqs(self) -> list[tuple[int, int]]:
        """(new tokens, positions attended) per sequence."""
        return [(self.context, self.context)] if self.phase == "prefill" else [(1, self.context)] * self.batch

    @property
    def label(self) -> str:
        return f"prefill {self.context}" if self.phase == "prefill" else f"decode {self.context} x{self.batch}"


def build_case(case: Case, cfg: ModelConfig, block_size: int, dtype: torch.dtype, device: str, seed: int = 0):
    """(q, k, v, metadata) of one step over a fresh one-layer cache whose blocks are handed out in shuffled order.
    Decode: the cached positions hold random values. Prefill: the step writes all of its positions."""
    from m4_flash.attention import build_metadata
    from m4_flash.kv_cache import PagedKVCache

    g_cpu = torch.Generator().manual_seed(seed)
    g_dev = torch.Generator(device=device).manual_seed(seed)
    per_seq = -(-case.context // block_size)
    num_blocks = per_seq * len(case.seqs)
    cache = PagedKVCache(cfg, num_blocks * block_size * cfg.kv_bytes_per_token(dtype), block_size, 1, dtype, device)
    if case.phase == "decode":
        cache.k[0].normal_(generator=g_dev)
        cache.v[0].normal_(generator=g_dev)
    order = torch.randperm(num_blocks, generator=g_cpu).tolist()
    tables = [order[i * per_seq:(i + 1) * per_seq] for i in range(len(case.seqs))]
    starts = [tk - tq for tq, tk in case.seqs]
    slots = []
    for table, (tq, tk) in zip(tables, case.seqs, strict=True):
        slots += [table[p // block_size] * block_size + p % block_size for p in range(tk - tq, tk)]
    tokens = sum(tq for tq, _ in case.seqs)
    h, kvh, d = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
    q = torch.randn(tokens, h, d, generator=g_dev, device=device, dtype=dtype)
    k = torch.randn(tokens, kvh, d, generator=g_dev, device=device, dtype=dtype)
    v = torch.randn(tokens, kvh, d, generator=g_dev, device=device, dtype=dtype)
    md = build_metadata(cache, tables, starts, [tq for tq, _ in case.seqs], slots, device)
    return q, k, v, md


def work(case: Case, cfg: ModelConfig, dtype: torch.dtype) -> dict:
    """prefill: the causal FLOPs (2 matmuls x 2 x heads x d x N(N+1)/2); decode: the K/V bytes read at least once."""
    h, kvh, d, n = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim, case.context
    if case.phase == "prefill":
        return {"flops": 2 * 2 * h * d * n * (n + 1) // 2}
    return {"kv_bytes": case.batch * n * kvh * d * 2 * _element_size(dtype)}


# ------------------------------------------------------------------------------------------------ the time


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize(torch.device(device))


def _do_bench():
    try:
        from triton.testing import do_bench
    except ImportError:
        return None
    return do_bench


def time_round_ms(fn: Callable[[], object], device: str, calls: int) -> float:
    """One round: the mean of `calls` calls (CPU, or CUDA without triton: synchronised wall time), or one
    triton.testing.do_bench median on CUDA."""
    do_bench = _do_bench() if device.startswith("cuda") else None
    if do_bench is not None:
        return float(do_bench(fn, warmup=10, rep=60, return_mode="median"))
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    _sync(device)
    return (time.perf_counter() - t0) * 1e3 / calls


# ------------------------------------------------------------------------------------------------- the run


def _row(case: Case, backend: str, **fields) -> dict:
    return {"phase": case.phase, "context": case.context, "batch": case.batch, "backend": backend, "status": "ok",
            "reason": None, "ms": None, "ms_min": None, "ms_max": None, "times_ms": [], "calls_per_round": None,
            "ratio": None, "ratio_note": None, "ratio_to_sdpa": None, "peak_mib": None, "predicted_mib": None,
            "tflops": None, "gbps": None, "pct_of_peak": None, **fields}


def run_attention(model: str = "tiny-qwen3", device: str | None = None, dtype: str | None = None,
                  contexts: list[int] | tuple[int, ...] = DEFAULT_CONTEXTS,
                  batches: list[int] | tuple[int, ...] = DEFAULT_BATCHES,
                  backends: list[str] | None = None, block_size: int = 16, repeat: int = DEFAULT_REPEAT,
                  memory_limit_gib: float | None = None, threads: int | None = None, seed: int = 0,
                  reporter: Reporter | None = None, min_round_s: float = 0.02) -> dict:
    """Time and peak memory of one attention layer per backend, prefill and decode at every context (decode at
    every batch). Returns {"setup", "results" (one row per case and backend), "naive_out_of_memory_at",
    "out_of_memory", "notes"}: what `--out` writes. `threads` sets torch's CPU threads when given."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise BenchError(f"--device {device}: CUDA is not available on this machine")
    if not (device == "cpu" or device.startswith("cuda")):
        raise BenchError(f"--device must be cpu or cuda[:N], got {device!r}")
    dtype = dtype or ("bfloat16" if device.startswith("cuda") else "float32")
    if dtype not in DTYPES:
        raise BenchError(f"unknown dtype {dtype!r}: choose from {', '.join(DTYPES)}")
    torch_dtype = DTYPES[dtype]
    for what, values in (("context", contexts), ("batch", batches)):
        bad = [n for n in values if not isinstance(n, int) or isinstance(n, bool) or n < 1]
        if bad or not values:
            raise BenchError(f"every {what} must be a positive integer, got {list(values)}")
    if block_size < 1 or repeat < 1:
        raise BenchError(f"block_size and repeat must be >= 1, got {block_size}, {repeat}")
    if memory_limit_gib is not None and not memory_limit_gib > 0:
        raise BenchError(f"--memory-limit-gib must be positive, got {memory_limit_gib}")
    cfg = attention_config(model)
    notes: list[str] = []
    if backends is None:
        backends, notes = default_backends(device, block_size, torch_dtype)
    backends = list(backends)
    warnings = check_backends(backends, device, block_size, torch_dtype)
    if threads is not None:
        torch.set_num_threads(threads)
    err = Console(stderr=True, soft_wrap=True)
    quiet = reporter is not None and reporter.quiet
    for line in warnings + notes:
        if not quiet:
            err.print(f"[yellow]note: {line}[/yellow]", highlight=False)
    notes = warnings + notes

    limit, limit_source = memory_limit(device, memory_limit_gib)
    name = device_name(device)
    peaks = gpu_peaks(name) if device.startswith("cuda") else None
    contexts, batches = sorted(set(contexts)), sorted(set(batches))
    cases = [Case("prefill", n) for n in contexts] + [Case("decode", n, b) for n in contexts for b in batches]
    setup = {
        "workload": {"name": "attention", "phases": ["prefill", "decode"], "contexts": contexts, "batches": batches},
        "model": model, "shape": {"heads": cfg.num_attention_heads, "kv_heads": cfg.num_key_value_heads,
                                  "head_dim": cfg.head_dim, "layers": 1},
        "device": device, "device_name": name, "dtype": dtype, "block_size": block_size, "blocks": "shuffled",
        "backends": backends, "repeat": repeat, "threads": torch.get_num_threads(),
        "memory_limit_gib": None if limit is None else limit / GIB, "memory_limit_source": limit_source,
        "peaks": peaks, "machine": machine_info(device), "date": time.strftime("%Y-%m-%d"),
        "timing": ("triton.testing.do_bench median per round" if device.startswith("cuda") and _do_bench() else
                   f"mean of enough calls to last {min_round_s:g} s per round") +
                  f", median of {repeat} round(s), backends interleaved, after one warm-up call each",
        "memory": ("torch.cuda.max_memory_allocated" if device.startswith("cuda") else
                   "torch.profiler memory events, running sum") + ", one separate call, the cache and q/k/v excluded",
    }
    rows: list[dict] = []
    oom_at: dict[tuple[str, str, int], int] = {}  # (backend, phase, batch) -> the context where it ran out of memory
    reporter = reporter or Reporter()
    with reporter, torch.inference_mode():
        bar = reporter.progress.add_task("attention", total=len(cases) * len(backends), rate="") if reporter.live else None
        for case in cases:
            case_rows = _run_case(case, cfg, backends, device, torch_dtype, block_size, repeat, limit, seed, min_round_s,
                                  oom_at, reporter, bar)
            _add_figures(case, case_rows, cfg, torch_dtype, peaks, dtype)
            rows += case_rows
            if bar is None and not reporter.quiet:
                err.print(_case_line(case, case_rows), highlight=False, markup=False)
    report = {"setup": setup, "results": rows, "notes": notes}
    report.update(out_of_memory_summary(rows, batches))
    return report


def _run_case(case: Case, cfg: ModelConfig, backends: list[str], device: str, dtype: torch.dtype, block_size: int,
              repeat: int, limit: int | None, seed: int, min_round_s: float, oom_at: dict, reporter: Reporter, bar) -> list[dict]:
    from m4_flash.backends import BACKEND_CLASSES

    def advance(backend: str) -> None:
        if bar is not None:
            reporter.progress.update(bar, advance=1, rate=f"{case.label} {backend}")

    rows = {b: _row(case, b, predicted_mib=predict_peak_bytes(b, case.seqs, cfg, dtype) / MIB) for b in backends}
    try:
        q, k, v, md = build_case(case, cfg, block_size, dtype, device, seed)
    except (torch.OutOfMemoryError, RuntimeError) as err:
        if not _is_oom(err):
            raise
        _free_after_oom(device)
        for b in backends:
            rows[b].update(status="oom", reason=f"out of memory: the case's KV cache does not fit ({_first_line(err)})")
            advance(b)
        return list(rows.values())
    case_limit = limit if limit is not None else _cuda_free_bytes(device)
    running: dict[str, Callable[[], object]] = {}
    warm_ms: dict[str, float] = {}
    for b in backends:
        row = rows[b]
        earlier = next((n for (bb, ph, bt), n in oom_at.items() if bb == b and ph == case.phase and bt == case.batch), None)
        if earlier is not None:
            row.update(status="skipped", reason=f"out of memory at a shorter context ({earlier})")
            advance(b)
            continue
        predicted = row["predicted_mib"] * MIB
        if predicted > case_limit:
            row.update(status="oom",
                       reason=f"out of memory (predicted {size_text(predicted)} > limit {size_text(case_limit)})")
            advance(b)
            continue
        backend = BACKEND_CLASSES[b]()

        def fn(backend=backend):
            return backend.forward(q, k, v, 0, md)

        try:
            _sync(device)
            t0 = time.perf_counter()
            fn()  # warm-up: caches the step's gather index / query tiles on md, compiles a kernel, warms the allocator
            _sync(device)
            warm_ms[b] = (time.perf_counter() - t0) * 1e3
            row["peak_mib"] = peak_bytes(fn, device) / MIB
            running[b] = fn
        except (torch.OutOfMemoryError, RuntimeError) as err:
            if not _is_oom(err):
                raise
            _free_after_oom(device)
            oom_at[(b, case.phase, case.batch)] = case.context
            row.update(status="oom", reason=f"out of memory at context {case.context} ({_first_line(err)})")
            advance(b)
    calls = {b: max(1, min(1000, math.ceil(min_round_s * 1e3 / max(warm_ms[b], 1e-3)))) for b in running}
    for _ in range(repeat):
        for b, fn in list(running.items()):
            try:
                rows[b]["times_ms"].append(time_round_ms(fn, device, calls[b]))
            except (torch.OutOfMemoryError, RuntimeError) as err:
                if not _is_oom(err):
                    raise
                _free_after_oom(device)
                oom_at[(b, case.phase, case.batch)] = case.context
                rows[b].update(status="oom", reason=f"out of memory at context {case.context} ({_first_line(err)})",
                               times_ms=[], peak_mib=None)
                del running[b]
                advance(b)
    for b in running:
        times = rows[b]["times_ms"]
        rows[b].update(ms=statistics.median(times), ms_min=min(times), ms_max=max(times),
                       calls_per_round=None if device.startswith("cuda") and _do_bench() else calls[b])
        advance(b)
    return list(rows.values())


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}"[:200]


def _add_figures(case: Case, rows: list[dict], cfg: ModelConfig, dtype: torch.dtype, peaks: dict | None, dtype_name: str) -> None:
    """Ratios (naive's median over each backend's, sdpa's likewise), TFLOP/s or GB/s, and % of the card's peak."""
    by = {r["backend"]: r for r in rows}
    naive, sdpa = by.get("naive"), by.get("sdpa")
    amount = work(case, cfg, dtype)
    for r in rows:
        r.update(amount)
        if r["ms"] is None:
            continue
        if naive is None:
            r["ratio_note"] = "no naive"
        elif naive["ms"] is None:
            r["ratio_note"] = "naive OOM" if naive["status"] in ("oom", "skipped") else "naive did not run"
        else:
            r["ratio"] = naive["ms"] / r["ms"]
        if sdpa is not None and sdpa["ms"] is not None:
            r["ratio_to_sdpa"] = sdpa["ms"] / r["ms"]
        seconds = r["ms"] * 1e-3
        if case.phase == "prefill":
            r["tflops"] = amount["flops"] / seconds / 1e12
            if peaks and dtype_name in ("bfloat16", "float16"):
                r["pct_of_peak"] = 100 * r["tflops"] / peaks["tflops_16bit"]
        else:
            r["gbps"] = amount["kv_bytes"] / seconds / 1e9
            if peaks:
                r["pct_of_peak"] = 100 * r["gbps"] / peaks["hbm_gbps"]


def out_of_memory_summary(rows: list[dict], batches: list[int]) -> dict:
    """`naive_out_of_memory_at`: the shortest context where naive ran out of memory (or was predicted to), for
    prefill and for decode per batch, None where it ran at every length; `out_of_memory`: every backend's."""
    oom = [{k: r[k] for k in ("backend", "phase", "context", "batch", "status", "reason")}
           for r in rows if r["status"] in ("oom", "skipped")]

    def first(phase: str, batch: int | None = None) -> int | None:
        hits = [r["context"] for r in oom if r["backend"] == "naive" and r["phase"] == phase
                and (batch is None or r["batch"] == batch)]
        return min(hits) if hits else None

    return {"naive_out_of_memory_at": {"prefill": first("prefill"), "decode": {str(b): first("decode", b) for b in batches}},
            "out_of_memory": oom}


def _fmt_ms(ms: float | None) -> str:
    if ms is None:
        return "–"
    return f"{ms:,.0f}" if ms >= 100 else f"{ms:.1f}" if ms >= 10 else f"{ms:.2f}" if ms >= 1 else f"{ms:.3f}"


def _case_line(case: Case, rows: list[dict]) -> str:
    """One line per case on stderr when there is no live bar (a log file, CI, a notebook)."""
    parts = []
    for r in rows:
        if r["ms"] is None:
            parts.append(f"{r['backend']} {r['status']}")
        else:
            parts.append(f"{r['backend']} {_fmt_ms(r['ms'])} ms" + (f" ({r['ratio']:.2f}x)" if r["ratio"] is not None else ""))
    return f"{case.label}: " + ", ".join(parts)
