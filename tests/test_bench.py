"""The benchmark as a user meets it: one-line errors, directions in every header, an 80-column table,
repetitions with their spread, and where --out writes; the attention workload's rows, ratios, peak memory and
out-of-memory skips. Tiny workloads, no timed asserts."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from rich.console import Console

from shared.tools import bench
from shared.tools.bench import Reporter, ThroughputWorkload, cpu_peak_bytes, render_table, run_attention, run_throughput
from shared.tools.milestones import ENGINES

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--num-requests", "2", "--prompt-len", "8", "--output-len", "4", "--max-model-len", "64",
        "--kv-cache-memory-bytes", str(4 << 20)]


@pytest.fixture(autouse=True)
def keep_threads():
    """One torch thread, as bench's default on 2 cores (two threads crawl when another process holds a core);
    bench.main sets the count for the process: give the rest of the session its own back."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def stub(engine: str, tps: list[float], **extra) -> dict:
    r = bench.Result(engine)
    for i, t in enumerate(tps):
        r.add(0.0123 * (i + 1), 0.00456, 1.5, 100)
        r.add(12.3456, 0.0789, 2.5, 100)
        r.wall_s += 200 / t
        r.close_repetition(200, 200 / t, 2, **extra)
    return r.summary()


def stub_report() -> dict:
    kv = dict(kv_mean_utilization=0.969, preemptions=72, max_running=50, mean_running=26.9)
    results = bench.add_ratios([stub("m2_batching", [770.5, 1185.1, 700.0], **kv),
                                stub("m3_paged", [985.5, 1315.7, 12345.6], **kv), stub("hf", [987.1, 10.0, 900.0])])
    setup = {"model": "random:qwen3-0.6b", "device": "cpu", "dtype": "float32", "threads": 1, "repeat": 3,
             "machine": {"cpu": "AMD EPYC 7B13 64-Core Processor", "cores": 2}, "date": "2026-11-27",
             "max_num_seqs": 64, "max_model_len": 1024, "kv_cache_memory_bytes": 33554432,
             "workload": {"name": "throughput", "num_requests": 128, "prompt_len": [32, 256], "output_len": [32, 256]}}
    return {"setup": setup, "results": results}


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "shared.tools.bench", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)


@pytest.mark.parametrize("args, says", [
    (["--engines", "m9_nope", "throughput"], "unknown engine 'm9_nope'"),  # the workload may follow --engines
    (["latency", "--model", "nope"], "nope"),
    (["attention", "--backends", "naive", "nope"], "unknown backend 'nope'"),
])
def test_user_mistakes_are_one_line_and_exit_2(args, says):
    p = run_cli(*args)
    assert p.returncode == 2
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and says in lines[0], p.stderr
    assert "Traceback" not in p.stderr and p.stdout == ""


@pytest.mark.parametrize("args", [
    ["throughput", "--prompt-len", "9:3"],
    ["throughput", "--output-len", "x"],
    ["latency", "--prompt-len", "8:16"],
    ["throughput", "--repeat", "0"],
    ["throughput", "--model", "random:nope"],
    ["compare", "missing.json"],
    ["latency", "--engines", "hf", "m9_future"],
    ["attention", "--contexts", "0"],
    ["attention", "--contexts", "512", "x"],
    ["attention", "--batches", "-4"],
    ["attention", "--backends", "naive", "naive"],
    ["attention", "--engines", "m3_paged"],  # an engine option: not the attention workload's
    ["throughput", "--backends", "sdpa"],  # and the other way round
    ["attention", "--memory-limit-gib", "0"],
    ["attention", "--device", "cuda:0"] if not torch.cuda.is_available() else ["attention", "--device", "tpu"],
])
def test_bad_arguments_exit_2_before_any_work(args, capsys):
    with pytest.raises(SystemExit) as e:
        bench.main(args)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and len(err.splitlines()) == 1


def test_compare_says_which_direction_is_better(tmp_path, capsys):
    path = tmp_path / "run.json"
    path.write_text(json.dumps(stub_report()))
    bench.main(["compare", str(path)])
    out = capsys.readouterr().out
    for label, way in (("output tok/s", "↑ higher"), ("TTFT p50", "↓ lower"), ("TPOT p99", "↓ lower"),
                       ("KV utilisation", "↑ higher")):
        line = next(line for line in out.splitlines() if line.strip().startswith(label))
        assert way in line
    assert "m3_paged" in out and "/ m2_batching" in out


def test_default_table_fits_80_columns_and_every_header_has_a_direction():
    report = stub_report()
    console = Console(width=80, record=True)
    console.print(bench.describe(report["setup"]))
    console.print(render_table(report["results"], report["setup"]))
    text = console.export_text()
    assert max(len(line) for line in text.splitlines()) <= 80
    assert "1,315.7" in text and "1.11–17.64" in text  # nothing was cut to make it fit
    compact = render_table(report["results"], report["setup"])
    full = render_table(report["results"], report["setup"], full=True)
    for table in (compact, full):
        for col in table.columns[1:]:
            if "reserved" in str(col.header) or "used" in str(col.header):
                continue  # KV sizes: neither more nor less is better by itself
            assert "↑" in str(col.header) or "↓" in str(col.header), col.header
    assert len(full.columns) > len(compact.columns)


def test_repetitions_give_min_median_max_and_one_ratio_per_round():
    workload = ThroughputWorkload(3, (8, 8), (4, 4))
    results = run_throughput(["m2_batching", "m3_paged"], "tiny-qwen3", "cpu", "float32", workload, max_model_len=64,
                             repeat=3, reporter=Reporter(quiet=True), kv_cache_memory_bytes=4 << 20)
    for r in results:
        assert r["output_tok_per_s_min"] <= r["output_tok_per_s"] <= r["output_tok_per_s_max"]
        assert len(r["repetitions"]) == 3 and len(r["ratios"]) == 3
        assert r["ratio_min"] <= r["ratio"] <= r["ratio_max"]
        assert r["ttft_ms_p50"] <= r["ttft_ms_p99"] and r["tpot_ms_p50"] <= r["tpot_ms_p99"]
        assert all(rep["output_tokens"] == 12 for rep in r["repetitions"])
    assert results[0]["ratios"] == [1.0, 1.0, 1.0] and results[1]["ratio_to"] == "m2_batching"
    assert results[1]["kv_mean_utilization"] > 0


def test_out_bare_name_goes_to_bench_results(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    report = bench.main(["throughput", "--engines", "m2_batching", "m3_paged", "--repeat", "2", "--threads", "1",
                         *TINY, "--out", "run.json"])
    saved = json.loads((tmp_path / "bench_results" / "run.json").read_text())
    assert saved["setup"]["threads"] == 1 and saved["setup"]["repeat"] == 2
    assert [len(r["repetitions"]) for r in saved["results"]] == [2, 2] == [len(r["ratios"]) for r in report["results"]]
    err = capsys.readouterr().err.splitlines()  # not a terminal: one line per engine and round, no bar
    assert len(err) == 2 * 2 + 1 and all("output tok/s" in line for line in err[:-1])
    assert bench.out_path("sub/run.json") == Path("sub/run.json") and bench.out_path("run.json") == Path("bench_results/run.json")
    assert bench.main(["compare", "run.json"])["results"] == saved["results"]  # compare finds it by the same name


def test_defaults_include_the_newest_milestone():
    helptext = bench.parser().format_help()
    assert "attention" in helptext and "--contexts" in helptext and "--memory-limit-gib" in helptext
    assert f"{ENGINES[-1]} hf (latency)" in helptext and " ".join(ENGINES[-2:]) in helptext
    assert bench.default_threads() >= 1


# ------------------------------------------------------------------------------------------- attention

ATTN = dict(contexts=[32, 64], batches=[1, 4], backends=["naive", "sdpa"], repeat=2)


def test_cpu_peak_memory_of_a_known_allocation():
    """The profiler's allocation events, summed in time order: 100 MiB held then freed is a 100 MiB peak; what
    was freed before the next allocation does not count twice; the call's peak is what the call itself allocated
    (the profiler does not see the free of a block allocated before it started)."""
    mib = 2**20

    def hundred():
        x = torch.ones(100 * mib, dtype=torch.uint8)
        del x

    def overlapping():
        a = torch.ones(50 * mib, dtype=torch.uint8)
        b = torch.ones(30 * mib, dtype=torch.uint8)
        del a
        c = torch.ones(40 * mib, dtype=torch.uint8)  # 70 MiB now held: the peak was 80
        del b, c

    held = torch.ones(64 * mib, dtype=torch.uint8)

    def free_what_was_held():
        nonlocal held
        held = None
        d = torch.ones(10 * mib, dtype=torch.uint8)
        del d

    assert cpu_peak_bytes(hundred) == pytest.approx(100 * mib, rel=0.01)
    assert cpu_peak_bytes(overlapping) == pytest.approx(80 * mib, rel=0.01)
    assert cpu_peak_bytes(free_what_was_held) == pytest.approx(10 * mib, rel=0.01)


def test_attention_rows_ratios_and_memory():
    report = run_attention("tiny-qwen3", "cpu", "float32", reporter=Reporter(quiet=True), **ATTN)
    rows = report["results"]
    cases = {(r["phase"], r["context"], r["batch"]) for r in rows}
    assert cases == {("prefill", 32, 1), ("prefill", 64, 1)} | {("decode", n, b) for n in (32, 64) for b in (1, 4)}
    assert len(rows) == 2 * len(cases) and all(r["status"] == "ok" for r in rows)
    by = {(r["phase"], r["context"], r["batch"], r["backend"]): r for r in rows}
    for (phase, n, b, _), r in by.items():
        naive = by[(phase, n, b, "naive")]
        assert r["ratio"] == pytest.approx(naive["ms"] / r["ms"]) and len(r["times_ms"]) == 2
        assert r["ms_min"] <= r["ms"] <= r["ms_max"] and r["peak_mib"] > 0
        if phase == "prefill":
            assert r["tflops"] == pytest.approx(4 * 4 * 64 * n * (n + 1) / 2 / (r["ms"] * 1e-3) / 1e12)  # 4 heads, d 64
        else:
            assert r["gbps"] == pytest.approx(b * n * 2 * 64 * 2 * 4 / (r["ms"] * 1e-3) / 1e9)  # 2 KV heads, fp32
    assert by[("prefill", 64, 1, "naive")]["ratio"] == 1.0
    naive, sdpa = by[("prefill", 64, 1, "naive")], by[("prefill", 64, 1, "sdpa")]
    assert naive["peak_mib"] > sdpa["peak_mib"]  # naive materialises the [heads, N, N] scores, twice at once
    assert 0.8 < naive["predicted_mib"] / naive["peak_mib"] < 1.25  # the prediction the OOM skip relies on
    setup = report["setup"]
    assert setup["shape"] == {"heads": 4, "kv_heads": 2, "head_dim": 64, "layers": 1} and setup["block_size"] == 16
    assert setup["machine"]["cores"] and setup["device_name"] and setup["threads"] == torch.get_num_threads()
    assert report["naive_out_of_memory_at"] == {"prefill": None, "decode": {"1": None, "4": None}}


def test_attention_memory_limit_skips_naive_and_says_at_what_length(tmp_path, monkeypatch, capsys):
    """A 1 MiB limit: naive's prefill at 128 tokens (two 256 KiB score matrices and the rest, 1.1 MiB predicted)
    is skipped, everything else runs; the table, the JSON and `compare` say so."""
    monkeypatch.chdir(tmp_path)
    report = bench.main(["attention", "--device", "cpu", "--contexts", "32", "128", "--batches", "1", "4", "--repeat", "1",
                         "--memory-limit-gib", str(1 / 1024), "--threads", "1", "--out", "attn.json"])
    saved = json.loads((tmp_path / "bench_results" / "attn.json").read_text())
    assert saved["naive_out_of_memory_at"] == {"prefill": 128, "decode": {"1": None, "4": None}}
    by = {(r["phase"], r["context"], r["batch"], r["backend"]): r for r in saved["results"]}
    naive, sdpa = by[("prefill", 128, 1, "naive")], by[("prefill", 128, 1, "sdpa")]
    assert naive["status"] == "oom" and naive["reason"].startswith("out of memory (predicted") and naive["ms"] is None
    assert sdpa["ms"] > 0 and sdpa["ratio"] is None and sdpa["ratio_note"] == "naive OOM"
    assert all(r["status"] == "ok" for k, r in by.items() if k != ("prefill", 128, 1, "naive"))
    out = " ".join(capsys.readouterr().out.split())
    assert "naive prefill from N = 128: out of memory (predicted" in out and "OOM" in out
    assert report["results"] == saved["results"]
    bench.main(["compare", "attn.json"])  # a saved attention run: its tables again
    assert "naive prefill from N = 128" in " ".join(capsys.readouterr().out.split())


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU refusal")
def test_attention_refuses_triton_on_cpu_unless_interpreted(monkeypatch, capsys):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(SystemExit) as e:
        bench.main(["attention", "--backends", "naive", "triton"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "TRITON_INTERPRET=1" in err and err.startswith("error:")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    p = subprocess.run([sys.executable, "-m", "shared.tools.bench", "attention", "--backends", "triton"], cwd=ROOT,
                       capture_output=True, text=True, timeout=120, env=env)
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1 and "Traceback" not in p.stderr


def test_gpu_peaks_by_card_name():
    assert bench.gpu_peaks("NVIDIA H100 80GB HBM3")["hbm_gbps"] == 3350
    assert bench.gpu_peaks("NVIDIA H100 PCIe")["tflops_16bit"] == 756
    assert bench.gpu_peaks("NVIDIA H200")["hbm_gbps"] == 4800
    assert bench.gpu_peaks("NVIDIA GeForce RTX 4090") is None and bench.gpu_peaks(None) is None
