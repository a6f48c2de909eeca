"""The benchmark as a user meets it: one-line errors, directions in every header, an 80-column table,
repetitions with their spread, and where --out writes. Tiny workloads, no timed asserts."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from rich.console import Console

from shared.tools import bench
from shared.tools.bench import Reporter, ThroughputWorkload, render_table, run_throughput
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
    assert f"{ENGINES[-1]} hf (latency)" in helptext and " ".join(ENGINES[-2:]) in helptext
    assert bench.default_threads() >= 1
