"""The benchmark as a user meets it: one-line errors, directions in every header, an 80-column table,
repetitions with their spread, and where --out writes; the attention workload's rows, ratios, peak memory and
out-of-memory skips. Tiny workloads, no timed asserts."""

import itertools
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


def exits_2_in_one_line(args: list[str], capsys) -> str:
    """`bench.main(args)` refuses before any work: exit status 2 and one red line; returns the line."""
    with pytest.raises(SystemExit) as e:
        bench.main(args)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and len(err.splitlines()) == 1, err
    return err


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
    exits_2_in_one_line(args, capsys)


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


# ---------------------------------------------------------------------------------------------- online

ONLINE_SPECS = ["m4_flash", "m5_chunked:max_num_batched_tokens=64,long_prefill_token_threshold=32"]


def test_online_workload_is_the_same_on_every_call():
    w = bench.OnlineWorkload(num_requests=6, prompt_len=(8, 16), output_len=(4, 8), rate=20, num_long=2,
                             long_len=(300, 400), long_output_len=3, seed=7)
    reqs = w.requests(4096)
    assert reqs == w.requests(4096) == bench.OnlineWorkload(**{**w.__dict__}).requests(4096)
    assert reqs != bench.OnlineWorkload(**{**w.__dict__, "seed": 8}).requests(4096)
    assert [r[1] for r in reqs] == sorted(r[1] for r in reqs) and len({r[0] for r in reqs}) == 8
    short, long = [r for r in reqs if not r[4]], [r for r in reqs if r[4]]
    assert len(short) == 6 and len(long) == 2
    assert all(8 <= len(p) <= 16 and 4 <= o <= 8 for _, _, p, o, _ in short)
    assert all(300 <= len(p) <= 400 and o == 3 for _, _, p, o, _ in long)
    assert all(16 <= t < 4096 for r in reqs for t in r[2])
    first, last = w.arrival_times()[0], w.arrival_times()[-1]
    assert [r[1] for r in long] == pytest.approx([first + (last - first) / 3, first + 2 * (last - first) / 3])
    fixed = bench.OnlineWorkload(num_requests=3, prompt_len=(8, 8), output_len=(4, 4), num_long=1, long_len=(50, 50),
                                 arrivals=[0.0, 0.5, 2.0])
    assert [(r[0], r[1]) for r in fixed.requests(4096)] == [("short-0", 0.0), ("short-1", 0.5), ("long-0", 1.0),
                                                            ("short-2", 2.0)]
    assert fixed.max_request_len() == 50 + 16  # the long prompt and its default 16 output tokens


def test_online_poisson_arrivals_have_mean_gap_one_over_rate():
    times = bench.OnlineWorkload(num_requests=4000, rate=5.0, num_long=0).arrival_times()
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert times[0] == 0.0 and all(g > 0 for g in gaps)
    assert sum(gaps) / len(gaps) == pytest.approx(0.2, rel=0.06)
    assert sorted(gaps)[len(gaps) // 2] == pytest.approx(0.2 * 0.693, rel=0.1)  # exponential: median = ln 2 / rate


def test_online_specs():
    assert bench.parse_spec("m4_flash") == ("m4_flash", {})
    assert bench.parse_spec("m5_chunked:max_num_batched_tokens=256,enable_chunked_prefill=False,attention_backend=sdpa") == (
        "m5_chunked", {"max_num_batched_tokens": 256, "enable_chunked_prefill": False, "attention_backend": "sdpa"})
    for bad in ("hf", "m1_basic", "m9_nope", "m5_chunked:max_num_batched_tokens", "m5_chunked:a=1",
                "m4_flash:long_prefill_token_threshold=0", "m5_chunked:block_size=16,block_size=32"):
        with pytest.raises(bench.BenchError):
            bench.parse_spec(bad)
    with pytest.raises(bench.BenchError, match="twice"):
        bench.check_specs(["m4_flash", "m4_flash"])


@pytest.mark.parametrize("args", [
    ["online", "--engines", "hf"],
    ["online", "--engines", "m1_basic", "m5_chunked"],
    ["online", "--engines", "m5_chunked:max_num_batched_tokens"],
    ["online", "--engines", "m4_flash:long_prefill_token_threshold=0"],
    ["online", "--rate", "0"],
    ["online", "--long-prompts", "-1"],
    ["online", "--long-len", "6000:2000"],
    ["online", "--output-len", "1"],
    ["online", "--block-size", "32"],  # a block size goes in a spec
    ["online", "--contexts", "512"],
    ["throughput", "--rate", "3"],  # online's options are not the others'
    ["latency", "--long-prompts", "2"],
    ["attention", "--behind-s", "1"],
    ["online", "--long-len", "600", "--max-model-len", "512", "--engines", "m4_flash"],  # does not fit
])
def test_online_bad_arguments_exit_2(args, capsys):
    exits_2_in_one_line(args, capsys)


def test_online_bad_spec_is_one_line_from_the_command_line():
    p = run_cli("online", "--engines", "m5_chunked:nope=1")
    assert p.returncode == 2 and p.stdout == "" and "Traceback" not in p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "m5_chunked takes no option nope" in lines[0]


@pytest.fixture(scope="module")
def online_run(tmp_path_factory):
    """One tiny replay through the command line, both engines: 4 short requests at 50/s, one 300-token prompt."""
    n = torch.get_num_threads()
    out = tmp_path_factory.mktemp("online") / "online.json"
    try:
        report = bench.main(["online", "--engines", *ONLINE_SPECS, "--num-requests", "4", "--rate", "50",
                             "--prompt-len", "8:16", "--output-len", "4:8", "--long-prompts", "1", "--long-len", "300",
                             "--long-output-len", "3", "--max-model-len", "512", "--kv-cache-memory-bytes", str(4 << 20),
                             "--threads", "1", "--out", str(out)])
    finally:
        torch.set_num_threads(n)
    return report, json.loads(out.read_text())


def test_online_replay_tokens_ttft_timeline_and_json(online_run):
    report, saved = online_run
    assert saved == report  # the JSON round-trips
    assert [r["engine"] for r in saved["results"]] == ONLINE_SPECS
    assert saved["setup"]["workload"]["name"] == "online" and saved["setup"]["machine"]["cores"]
    for r in saved["results"]:
        assert r["num_repetitions"] == 1 and r["factor_to"] == "m4_flash"
        rep = r["repetitions"][0]
        reqs = rep["requests"]
        assert len(reqs) == 5 and sum(q["long"] for q in reqs) == 1
        for q in reqs:
            assert len(q["token_s"]) == q["output_len"]  # every token, each stamped once
            assert q["token_s"][0] > q["arrival_s"] and q["token_s"] == sorted(q["token_s"])
            assert q["added_s"] >= q["arrival_s"]
        tl = rep["timeline"]
        computed = sum(q["prompt_len"] + q["output_len"] - 1 for q in reqs)  # no preemption with this KV
        assert sum(tl["prefill_tokens"]) + sum(tl["decode_tokens"]) == computed == rep["prefill_tokens"] + rep["decode_tokens"]
        assert len(tl["start_s"]) == rep["steps"] and tl["start_s"] == sorted(tl["start_s"])
        assert 0 < r["ttft_ms_p50"] <= r["ttft_ms_p99"] and 0 < r["itl_ms_p50"] <= r["itl_ms_p99"] <= r["max_stall_ms"]
        assert r["output_tokens"] == sum(q["output_len"] for q in reqs) and r["output_tok_per_s"] > 0
        assert rep["long_arrivals_s"] == [q["arrival_s"] for q in reqs if q["long"]]
    m5 = saved["results"][1]
    assert m5["scheduler"]["max_num_batched_tokens"] == 64 and m5["scheduler"]["enable_chunked_prefill"]
    assert max(m5["repetitions"][0]["timeline"]["prefill_tokens"]) <= 64  # the 300-token prompt ran in chunks
    assert saved["results"][0]["factors"]["itl_ms_p99"] == 1.0 and m5["factors"]["itl_ms_p99"] > 0


def test_online_table_compare_and_plots(online_run, tmp_path, capsys):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    report, saved = online_run
    console = Console(width=80, record=True)
    console.print(bench.describe(report["setup"]))
    console.print(bench.render_online(report))
    text = console.export_text()
    assert max(len(line) for line in text.splitlines()) <= 80 and "1.00×" in text and "Poisson at 50/s" in text
    assert len(bench.render_online(report, full=True).columns) > len(bench.render_online(report).columns)
    path = tmp_path / "online.json"
    path.write_text(json.dumps(saved))
    bench.main(["compare", str(path)])
    out = capsys.readouterr().out
    assert "ITL p99" in out and "m5_chunked" in out
    fig = bench.plot_timeline(report)
    assert len(fig.axes) == 2 and all(len(a.patches) == 2 * len(r["repetitions"][0]["timeline"]["start_s"])
                                      for a, r in zip(fig.axes, report["results"]))
    one = bench.plot_timeline(report, specs=[ONLINE_SPECS[1]])
    assert len(one.axes) == 1
    fig2 = bench.plot_tradeoff(report, x="long_ttft_ms_p99")
    assert len(fig2.axes[0].collections[0].get_offsets()) == 2
    with pytest.raises(bench.BenchError):
        bench.plot_timeline(report, specs=["m3_paged"])
    plt.close("all")


# ---------------------------------------------------------------------------------------- prefix cache

PREFIX_SPECS = ["m6_prefix", "m6_prefix:enable_prefix_caching=False"]


def _digest(requests) -> str:
    import hashlib

    return hashlib.sha256(json.dumps(requests).encode()).hexdigest()[:16]


def test_prefix_fields_leave_default_workloads_unchanged():
    """The digests were taken from the requests before the prefix fields existed: same seeds, same requests."""
    tw, ow = ThroughputWorkload(64, (32, 256), (32, 256)), bench.OnlineWorkload()
    assert _digest(tw.requests(4096)) == "ae173cdc9127cf73" and _digest(ow.requests(4096)) == "79739f6ff32808d1"
    assert tw.requests(4096) == ThroughputWorkload(64, (32, 256), (32, 256), prefix_len=0, num_prefixes=5).requests(4096)
    assert ow.requests(4096) == bench.OnlineWorkload(prefix_len=0, num_prefixes=3).requests(4096)
    assert all(32 <= len(p) <= 256 for p, _ in tw.requests(4096))  # prefix_len 0 adds no token
    assert tw.max_request_len() == 256 + 256 and ow.max_request_len() == 6000 + 16


def test_prefix_shared_requests_are_a_prefix_then_the_usual_prompt():
    base = ThroughputWorkload(20, (8, 16), (4, 8))
    w = ThroughputWorkload(20, (8, 16), (4, 8), prefix_len=32, num_prefixes=3)
    reqs = w.requests(4096)
    assert reqs == w.requests(4096)  # seeded
    assert [(p[32:], o) for p, o in reqs] == base.requests(4096)  # the user turn: the requests drawn as before
    assert len({tuple(p[:32]) for p, _ in reqs}) == 3 and all(16 <= t < 4096 for p, _ in reqs for t in p[:32])
    assert w.max_request_len() == 32 + 16 + 8
    one = ThroughputWorkload(5, (8, 8), (4, 4), prefix_len=16).requests(4096)
    assert len({tuple(p[:16]) for p, _ in one}) == 1
    ow = bench.OnlineWorkload(num_requests=6, prompt_len=(8, 16), output_len=(4, 8), rate=20, num_long=2,
                              long_len=(300, 400), long_output_len=3, seed=7)
    op = bench.OnlineWorkload(**{**ow.__dict__, "prefix_len": 32, "num_prefixes": 2})
    plain, prefixed = ow.requests(4096), op.requests(4096)
    assert [(r[0], r[1], r[2], r[3]) for r in plain] == [(r[0], r[1], r[2][32:], r[3]) for r in prefixed]
    assert len({tuple(r[2][:32]) for r in prefixed}) == 2 and any(r[4] for r in prefixed)  # long prompts have one too
    assert op.max_request_len() == 32 + 400 + 3
    for bad in ({"prefix_len": -1}, {"num_prefixes": 0}):
        with pytest.raises(bench.BenchError):
            ThroughputWorkload(4, (8, 8), (4, 4), **bad)
        with pytest.raises(bench.BenchError):
            bench.OnlineWorkload(**bad)


@pytest.mark.parametrize("args", [
    ["throughput", "--prefix-len", "-1"],
    ["throughput", "--num-prefixes", "0"],
    ["latency", "--prefix-len", "8"],
    ["attention", "--num-prefixes", "2"],
    ["throughput", "--prefix-len", "600", "--max-model-len", "512"],  # the prefix counts: does not fit
    ["online", "--prefix-len", "600", "--long-prompts", "0", "--max-model-len", "512", "--engines", "m6_prefix"],
    ["prefix"],
    ["prefix", "nope"],
    ["prefix", "ttft", "--lengths", "16"],  # shorter than two blocks: nothing to find cached
    ["prefix", "ttft", "--lengths", "8192"],  # with its output token, longer than tiny-qwen3's context
    ["prefix", "ttft", "--lengths", "64", "64"],
    ["prefix", "ttft", "--engines", "hf"],
    ["prefix", "multiturn", "--turns", "0"],
    ["prefix", "multiturn", "--engines", "m6_prefix:scheduling_policy=lpm,enable_prefix_caching=False"],
    ["prefix", "kv-sweep", "--kv-blocks", "4", "--prefix-len", "64", "--prompt-len", "8"],  # fewer than one request
    ["prefix", "kv-sweep", "--policies", "lru"],
    ["prefix", "kv-sweep", "--engines", "m6_prefix"],  # kv-sweep builds m6 itself
    ["prefix", "ttft", "--model", "nope"],
])
def test_prefix_bad_arguments_exit_2_in_one_line(args, capsys):
    exits_2_in_one_line(args, capsys)


def test_prefix_help_lists_the_scenarios(capsys):
    assert "prefix" in bench.parser().format_help() and "--prefix-len" in bench.parser().format_help()
    from shared.tools.bench import prefix

    helptext = prefix.parser().format_help()
    assert all(s in helptext for s in ("ttft", "multiturn", "kv-sweep", "lpm"))
    with pytest.raises(SystemExit) as e:
        bench.main(["prefix", "kv-sweep", "--kv-blocks", "4", "--prefix-len", "64", "--prompt-len", "8"])
    assert e.value.code == 2
    assert "(104 tokens: prefix + prompt + output) takes 7 blocks of 16 tokens" in capsys.readouterr().err  # the why


def test_prefix_throughput_shows_the_hit_rate(capsys):
    report = bench.main(["throughput", "--engines", "m5_chunked", "m6_prefix", "--prefix-len", "64", "--num-requests", "4",
                         "--prompt-len", "8", "--output-len", "4", "--max-model-len", "128", "--repeat", "1",
                         "--threads", "1", "--kv-cache-memory-bytes", str(4 << 20), "--max-num-seqs", "1"])
    m5, m6 = report["results"]  # one request at a time: each finds the prefix the first one computed
    assert m5.get("prefix_hit_rate") is None and 0 < m6["prefix_hit_rate"] < 1
    assert report["setup"]["workload"]["prefix_len"] == 64
    out = capsys.readouterr().out
    assert "hit %" in out and f"{m6['prefix_hit_rate']:.1%}" in out and "shared prefix of 64 tokens" in " ".join(out.split())
    assert max(len(line) for line in out.splitlines()) <= 80
    full = render_table(report["results"], report["setup"], full=True)
    assert any("prefix hit" in str(c.header) for c in full.columns)


def test_prefix_online_table_shows_the_hit_rate_within_80_columns():
    results = [{"engine": e, "ttft_ms_p50": 123.4, "ttft_ms_p99": 1234.5, "behind_long_ttft_ms_p50": 1993.2, "itl_ms_p50": 12.3,
                "itl_ms_p99": 403.5, "max_stall_ms": 1364.2, "output_tok_per_s": 1391.2, "factors": {"itl_ms_p99": 1.0}}
               for e in ("m5_chunked", "m6_prefix")]
    results[1]["prefix_hit_rate"] = 0.913
    report = {"setup": {"repeat": 1, "workload": {"behind_s": 2.0}}, "results": results}
    console = Console(width=80, record=True)
    console.print(bench.render_online(report))
    text = console.export_text()
    assert max(len(line) for line in text.splitlines()) <= 80 and "91%" in text and "…" not in text
    assert any("hit" in str(c.header) for c in bench.render_online(report, full=True).columns)
    del results[1]["prefix_hit_rate"]
    assert not any("hit" in str(c.header) for c in bench.render_online(report).columns)


def _prefix_cli(tmp_path_factory, *args: str) -> tuple[dict, dict]:
    n = torch.get_num_threads()
    out = tmp_path_factory.mktemp("prefix") / "run.json"
    try:
        report = bench.main(["prefix", *args, "--threads", "1", "--out", str(out)])
    finally:
        torch.set_num_threads(n)
    return report, json.loads(out.read_text())


@pytest.fixture(scope="module")
def prefix_ttft_run(tmp_path_factory):
    return _prefix_cli(tmp_path_factory, "ttft", "--lengths", "64", "96", "--repeat", "2")


@pytest.fixture(scope="module")
def prefix_multiturn_run(tmp_path_factory):
    return _prefix_cli(tmp_path_factory, "multiturn", "--conversations", "2", "--turns", "3", "--first-len", "32",
                       "--user-len", "16", "--output-len", "4")


@pytest.fixture(scope="module")
def prefix_kv_sweep_run(tmp_path_factory):
    """12 requests on 3 prefixes of 64 tokens, one at a time (no preemption, whose returns would hit their own
    blocks): at 6 blocks (one request's worth) the prefixes are evicted, at 24 every one stays."""
    return _prefix_cli(tmp_path_factory, "kv-sweep", "--num-prefixes", "3", "--prefix-len", "64", "--num-requests", "12",
                       "--prompt-len", "8:16", "--output-len", "4", "--kv-blocks", "24", "6", "--max-num-seqs", "1")


def test_prefix_ttft_cached_request_hits_all_but_its_last_block(prefix_ttft_run):
    report, saved = prefix_ttft_run
    assert saved == report and saved["setup"]["workload"]["name"] == "prefix-ttft"
    by = {(r["length"], r["engine"]): r for r in report["results"]}
    assert list(by) == [(n, s) for n in (64, 96) for s in PREFIX_SPECS]  # rows: length x engine
    for n in (64, 96):
        cached, uncached = by[(n, PREFIX_SPECS[0])], by[(n, PREFIX_SPECS[1])]
        assert cached["hit_tokens"] == n - 16 and cached["computed_tokens"] == 16 and cached["prefix_caching"]
        assert uncached["hit_tokens"] == 0 and uncached["computed_tokens"] == n and not uncached["prefix_caching"]
        for r in (cached, uncached):
            assert len(r["ttft_ms_rounds"]) == 2 and r["ttft_ms_min"] <= r["ttft_ms"] <= r["ttft_ms_max"]
            assert r["reference"] == PREFIX_SPECS[1] and r["speedup_min"] <= r["speedup"] <= r["speedup_max"]
        assert uncached["speedup"] == 1.0 and cached["speedup"] > 0


def test_prefix_multiturn_hits_from_turn_two_only_with_caching(prefix_multiturn_run):
    report, saved = prefix_multiturn_run
    assert saved == report
    on, off = report["results"]
    assert [r["engine"] for r in (on, off)] == PREFIX_SPECS and on["reference"] == PREFIX_SPECS[1]
    assert [t["prompt_len_mean"] for t in on["turns"]] == [32, 32 + 4 + 16, 32 + 2 * (4 + 16)]
    assert on["turns"][0]["hit_rate"] == 0 and all(t["hit_rate"] > 0 for t in on["turns"][1:])
    assert all(t["hit_rate"] == 0 and t["hit_tokens"] == 0 for t in off["turns"])
    for t in on["turns"][1:]:  # whole blocks are found, and what was found was not computed
        assert t["hit_tokens"] % 16 == 0 and t["computed_prompt_tokens"] == t["queried_tokens"] - t["hit_tokens"]
    assert all(t["computed_prompt_tokens"] == 2 * t["prompt_len_mean"] for t in off["turns"])
    assert all(t["output_tokens"] == 2 * 4 and t["ttft_ms_p50"] > 0 and t["wall_s"] > 0 for t in on["turns"])
    assert 0 < on["hit_rate"] < 1 and off["hit_rate"] == 0 and len(on["rounds"]) == 1


def test_prefix_kv_sweep_more_memory_keeps_more_prefixes(prefix_kv_sweep_run):
    report, saved = prefix_kv_sweep_run
    assert saved == report
    rows = report["results"]
    assert [(r["kv_blocks"], r["policy"], r["prefix_caching"]) for r in rows] == [
        (6, "fcfs", True), (6, "lpm", True), (24, "fcfs", True), (24, "lpm", True), (24, "fcfs", False)]
    by = {(r["kv_blocks"], r["policy"]): r for r in rows if r["prefix_caching"]}
    per_token = report["setup"]["kv_bytes_per_token"]
    for policy in ("fcfs", "lpm"):
        small, large = by[(6, policy)], by[(24, policy)]
        assert large["hit_rate"] >= small["hit_rate"] and small["evictions"] > 0 and large["evictions"] == 0
        assert small["preemptions"] == large["preemptions"] == 0
        assert small["kv_mib"] == 6 * 16 * per_token / 2**20
    for r in rows:
        assert r["output_tokens"] == 12 * 4 and r["ttft_ms_p50"] <= r["ttft_ms_p99"] and r["output_tok_per_s"] > 0
    assert rows[-1]["hit_rate"] == 0 and rows[-1]["engine"] == "m6_prefix:enable_prefix_caching=False"
    assert by[(6, "lpm")]["vs_fcfs"]["output_tok_per_s"] > 0 and by[(6, "fcfs")]["vs_fcfs"] is None
    assert report["setup"]["max_model_len"] == 96  # 64 + 16 + 4 tokens, in whole blocks


def test_prefix_tables_compare_and_plots(prefix_ttft_run, prefix_multiturn_run, prefix_kv_sweep_run, tmp_path, capsys):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from shared.tools.bench.plots import plot_hit_rate_vs_kv, plot_multiturn, plot_prefix_ttft
    from shared.tools.bench.tables import render_kv_sweep, render_multiturn, render_prefix_ttft

    for (report, _), render in ((prefix_ttft_run, render_prefix_ttft), (prefix_multiturn_run, render_multiturn),
                                (prefix_kv_sweep_run, render_kv_sweep)):
        console = Console(width=80, record=True)
        console.print(bench.describe(report["setup"]))
        console.print(render(report))
        text = console.export_text()
        assert max(len(line) for line in text.splitlines()) <= 80 and "…" not in text, text
    path = tmp_path / "ttft.json"
    path.write_text(json.dumps(prefix_ttft_run[1]))
    capsys.readouterr()
    bench.main(["compare", str(path)])  # a saved prefix run: its table again
    out = capsys.readouterr().out
    assert "prefix-ttft" in out and "enable_prefix_caching=False" in out
    fig = plot_prefix_ttft(prefix_ttft_run[0], path=tmp_path / "ttft.png")
    assert len(fig.axes[0].patches) == 4 and (tmp_path / "ttft.png").stat().st_size > 0
    fig = plot_multiturn(prefix_multiturn_run[0])
    assert len(fig.axes) == 2 and all(len(a.lines) == 2 for a in fig.axes)
    fig = plot_hit_rate_vs_kv(prefix_kv_sweep_run[0], x="mib")
    assert [len(a.lines) for a in fig.axes] == [2, 3]  # fcfs and lpm; and the caching-off baseline
    with pytest.raises(bench.BenchError):
        plot_multiturn(prefix_ttft_run[0])
    plt.close("all")


# -- M7: quant scenarios, --engine-model ------------------------------------------------------------------
@pytest.mark.parametrize("args", [
    ["quant", "speed"],
    ["quant", "decode", "--batch-sizes", "0"],
    ["quant", "ppl", "--windows", "0"],
    ["quant", "memory", "--group-size", "48"],  # the quantizer's own message
    ["quant", "memory", "--model", "nope"],
    ["throughput", "--engines", "m6_prefix", "--engine-model", "m7_gptq=tiny-qwen3"],  # not one of the run's engines
    ["throughput", "--engines", "m6_prefix", "--engine-model", "m6_prefix"],
    ["latency", "--engines", "m6_prefix", "--engine-model", "m6_prefix=tiny-qwen3"],
])
def test_quant_bad_arguments_exit_2_in_one_line(args, capsys):
    exits_2_in_one_line(args, capsys)


def test_quant_memory_of_the_4_bit_layers(tmp_path, capsys):
    from shared.tools.bench.quant import plot

    report = bench.main(["quant", "memory", "--out", str(tmp_path / "memory.json")])
    fp32, bf16, q32, q16 = report["rows"]
    assert bf16["linear_vs_fp32"] == 0.5 and q16["model_bytes"] < q32["model_bytes"] < fp32["model_bytes"]
    # 4 bits a weight, plus a bfloat16 scale-and-zero pair per 128 weights: 4.25 / 32
    assert q32["linear_vs_fp32"] == pytest.approx(4.25 / 32, rel=1e-3) and q32["kernel"] == "cpu_int4"
    assert json.loads((tmp_path / "memory.json").read_text())["rows"][2]["linear_bytes"] == q32["linear_bytes"]
    assert "GPTQ g128" in capsys.readouterr().out
    assert plot(report) is not None


def test_engine_model_runs_one_engine_on_another_model(tmp_path):
    from m7_gptq.quantize import main as quantize

    gptq = str(tmp_path / "rtn")
    assert quantize(["--out", gptq, "--method", "rtn"]) == 0
    report = bench.main(["throughput", "--engines", "m6_prefix", "m7_gptq", "--engine-model", f"m7_gptq={gptq}",
                         "--num-requests", "2", "--prompt-len", "8", "--output-len", "4", "--repeat", "1",
                         "--max-model-len", "64", "--threads", "1"])
    assert report["setup"]["engine_models"] == {"m7_gptq": gptq}
    assert f"m7_gptq on {gptq}" in " ".join(bench.describe(report["setup"]).split())


def test_quant_ppl_and_decode_tables_and_plots(capsys):
    from shared.tools.bench.quant import PPL_CONFIGS, plot

    ppl = bench.main(["quant", "ppl", "--num-samples", "2", "--seq-len", "64", "--windows", "4"])
    assert [r["config"] for r in ppl["rows"]] == [label for label, _ in PPL_CONFIGS] and ppl["eval_tokens"] == 256
    full = ppl["rows"][0]
    assert full["vs_fp32"] == 0 and all(r["ppl"] > 1 for r in ppl["rows"])
    decode = bench.main(["quant", "decode", "--batch-sizes", "1", "2", "--output-len", "4", "--rounds", "1"])
    engines = {r["engine"] for r in decode["rows"]}
    assert engines == {"float32 (m6)", "bfloat16 (m6)", "GPTQ cpu_int4 + float32 (m7)", "GPTQ cpu_int4 + bfloat16 (m7)",
                       "GPTQ torch + float32 (m7)"}
    assert all(r["decode_tok_s"] > 0 for r in decode["rows"]) and len(decode["rows"]) == 10
    out = capsys.readouterr().out
    assert "perplexity" in out and "decode tok/s" in out
    assert plot(ppl) is not None and plot(decode) is not None
