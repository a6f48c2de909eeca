"""`python -m shared.tools.bench serve`, the load over HTTP: its helpers (percentiles, Poisson arrivals, the
requests every server gets, the summary and its ratios), a real run against a launched m6_prefix server, a run
against a server already running (the --url path, the chat endpoint, --max-concurrency, refusals counted and not
fatal), and every user mistake as one red line with exit status 2. Small servers, a few requests, no timed asserts."""

import itertools
import json
import math
import statistics
from types import SimpleNamespace

import pytest

from shared.loader import resolve_model
from shared.tokenizer import Tokenizer
from shared.tools import bench
from shared.tools.bench import http_load
from tests.test_bench import exits_2_in_one_line

# one torch thread per server: the CPUs are shared with the test process and other suites
SPEC = "m6_prefix:threads=1"


# ------------------------------------------------------------------------------------------ helpers


def test_percentiles_interpolate_between_ranks_as_numpy_does():
    xs = [float(x) for x in range(1, 101)]
    assert http_load.percentile(xs, 50) == pytest.approx(50.5)
    assert http_load.percentile(xs, 90) == pytest.approx(90.1)
    assert http_load.percentile(xs, 99) == pytest.approx(99.01)
    assert http_load.percentile([3.0], 99) == 3.0 and http_load.percentile([], 50) is None
    ms = http_load.latency_ms([0.001, 0.002, 0.003, 0.004])
    assert ms["mean"] == pytest.approx(2.5) and ms["p50"] == pytest.approx(2.5) and ms["p99"] == pytest.approx(3.97)
    assert http_load.latency_ms([]) == {"mean": None, "p50": None, "p90": None, "p99": None}


def test_poisson_arrivals_same_seed_same_times_and_mean_gap_one_over_rate():
    a = http_load.poisson_arrivals(20_000, 8.0, seed=3)
    assert a == http_load.poisson_arrivals(20_000, 8.0, seed=3)
    assert a != http_load.poisson_arrivals(20_000, 8.0, seed=4)
    assert a[0] == 0.0 and a == sorted(a)
    gaps = [b - x for x, b in itertools.pairwise(a)]
    assert statistics.fmean(gaps) == pytest.approx(1 / 8, rel=0.03)
    assert statistics.stdev(gaps) == pytest.approx(1 / 8, rel=0.05)  # exponential: the sd equals the mean
    assert http_load.poisson_arrivals(5, math.inf, seed=3) == [0.0] * 5


def test_requests_are_the_same_for_the_same_seed_and_do_not_depend_on_the_rate():
    tok = SimpleNamespace(vocab_size=500, decode=lambda ids: " ".join(map(str, ids)))
    a = http_load.plan_requests(50, (3, 9), (2, 5), seed=1, rate=4.0, tokenizer=tok)
    assert a == http_load.plan_requests(50, (3, 9), (2, 5), seed=1, rate=4.0, tokenizer=tok)
    other_rate = http_load.plan_requests(50, (3, 9), (2, 5), seed=1, rate=math.inf, tokenizer=tok)
    assert [(r.prompt, r.output_len) for r in a] == [(r.prompt, r.output_len) for r in other_rate]
    reseeded = http_load.plan_requests(50, (3, 9), (2, 5), seed=2, rate=4.0, tokenizer=tok)
    assert [r.prompt for r in reseeded] != [r.prompt for r in a]
    for r in a:
        assert 3 <= r.input_len <= 9 and len(r.prompt) == r.input_len and 2 <= r.output_len <= 5
        assert all(16 <= t < 500 for t in r.prompt)  # not the first 16 ids: special tokens
    assert {r.input_len for r in a} == set(range(3, 10))  # uniform over the whole range
    chat = http_load.plan_requests(3, (4, 4), (2, 2), seed=1, rate=4.0, tokenizer=tok, chat=True)
    assert all(isinstance(r.prompt, str) and len(r.prompt.split()) == 4 for r in chat)
    shared = http_load.plan_requests(4, (3, 5), (2, 2), seed=1, rate=4.0, tokenizer=tok, prefix_len=7)
    assert len({tuple(r.prompt[:7]) for r in shared}) == 1  # one system prompt in front of every request
    assert all(r.input_len == len(r.prompt) and r.prompt[7:] == q.prompt for r, q in
               zip(shared, http_load.plan_requests(4, (3, 5), (2, 2), seed=1, rate=4.0, tokenizer=tok), strict=True))
    words = http_load.plan_requests(3, (6, 6), (2, 2), seed=1, rate=4.0)  # no tokenizer: random words
    assert all(len(r.prompt.split()) == 6 and set(r.prompt.split()) <= set(http_load.WORDS) for r in words)
    body = http_load.request_body(a[0], "m", "completions")
    assert body["prompt"] == a[0].prompt and body["max_tokens"] == a[0].output_len and body["ignore_eos"] is True
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert http_load.request_body(chat[0], "m", "chat")["messages"] == [{"role": "user", "content": chat[0].prompt}]


def _record(i: int, status: int = 200, chunks=(0.10, 0.12, 0.15), out: int = 3, error=None) -> http_load.Record:
    rec = http_load.Record(i, 0.0, 4, out, send_s=0.0, status=status, error=error)
    if status == 200 and error is None:
        rec.chunk_s, rec.end_s, rec.done = list(chunks), chunks[-1] + 0.01, True
        rec.prompt_tokens, rec.output_tokens = 4, out
    return rec


def test_summary_counts_refusals_and_failures_and_ratios_point_the_right_way():
    records = [_record(0), _record(1, chunks=(0.2, 0.3, 0.4)), _record(2, status=429, error="queue full"),
               _record(3, status=None, error="no answer within --timeout 1 s")]
    s = http_load.summarize_load("a", records, duration=2.0)
    assert (s["completed"], s["refused"], s["failed"]) == (2, 1, 1)
    assert s["not_ok_by_status"] == {"429": 1, "no answer": 1}
    assert s["output_tokens"] == 6 and s["output_tok_per_s"] == 3.0 and s["total_tok_per_s"] == 7.0
    assert s["requests_per_s"] == 1.0
    assert s["ttft_ms_p50"] == pytest.approx(150.0) and s["e2e_ms_mean"] == pytest.approx(285.0)
    assert s["itl_ms_mean"] == pytest.approx((20 + 30 + 100 + 100) / 4)  # the gaps between text chunks, pooled
    slower = http_load.summarize_load("b", [_record(0, chunks=(0.2, 0.24, 0.3))], duration=4.0)
    http_load.add_serve_ratios([s, slower])
    assert s["ratios"]["output_tok_per_s"] == 1.0 and slower["ratio_to"] == "a"
    assert slower["ratios"]["output_tok_per_s"] == pytest.approx(0.25)  # < 1: worse (higher is better)
    assert slower["ratios"]["ttft_ms_p50"] == pytest.approx(200 / 150)  # > 1: worse (lower is better)
    table = http_load.render_result(slower, several=True)
    assert [str(c.header) for c in table.columns] == ["figure", "value", "vs a"]


# ------------------------------------------------------------------------------------------ mistakes


@pytest.mark.parametrize("args, says", [
    ([], "either --url"),
    (["--url", "http://127.0.0.1:1", "--launch", "m6_prefix"], "either --url"),
    (["--url", "localhost:8000"], "http://HOST:PORT"),
    (["--url", "http://127.0.0.1:notaport"], "http://HOST:PORT"),
    (["--launch", "m6_prefix", "--rate", "0"], "--rate"),
    (["--launch", "m6_prefix", "--rate", "fast"], "--rate"),
    (["--launch", "m9_nope"], "unknown engine 'm9_nope'"),
    (["--launch", "hf"], "unknown engine 'hf'"),
    (["--launch", "m6_prefix:max_num_sequences=4"], "takes no option max_num_sequences"),
    (["--launch", "m6_prefix:max_num_seqs"], "expected key=value"),
    (["--launch", "m6_prefix", "--launch", "m6_prefix"], "given twice"),
    (["--launch", "m6_prefix", "--input-len", "9:3"], "--input-len"),
    (["--launch", "m6_prefix", "--output-len", "0"], "--output-len"),
    (["--launch", "m6_prefix", "--model", "nope"], "unknown model 'nope'"),
    (["--launch", "m6_prefix", "--max-concurrency", "0"], "--max-concurrency"),
    (["--launch", "m6_prefix", "--endpoint", "embeddings"], "--endpoint"),
])
def test_bad_arguments_exit_2_in_one_line_before_any_server_starts(args, says, capsys):
    assert says in exits_2_in_one_line(["serve", *args], capsys)


def test_unreachable_server_is_one_line(capsys):
    port = http_load.free_port()  # nothing listens there
    err = exits_2_in_one_line(["serve", "--url", f"http://127.0.0.1:{port}", "--num-requests", "1"], capsys)
    assert f"cannot reach the server at http://127.0.0.1:{port}" in err


def test_a_server_that_dies_at_start_is_one_line_with_its_last_words(capsys):
    err = exits_2_in_one_line(["serve", "--launch", f"{SPEC},scheduling_policy=nope", "--num-requests", "1"], capsys)
    assert "exited with status 2 before it was ready" in err and "scheduling_policy must be one of" in err


# ------------------------------------------------------------------------------------------ real runs


def test_launched_server_every_request_completes_with_the_tokens_asked_for(tmp_path, capsys):
    out = tmp_path / "http_load.json"
    report = bench.main(["serve", "--launch", SPEC, "--num-requests", "6", "--input-len", "4:12", "--output-len", "3:8",
                         "--rate", "40", "--seed", "1", "--out", str(out), "--plot", str(tmp_path / "serve.png")])
    captured = capsys.readouterr()
    assert (tmp_path / "serve.png").stat().st_size > 10_000  # the percentiles drawn
    saved = json.loads(out.read_text())
    assert saved == json.loads(json.dumps(report))
    setup = saved["setup"]
    assert setup["engines"] == [SPEC] and setup["rate"] == 40 and setup["num_requests"] == 6 and setup["seed"] == 1
    assert setup["input_len"] == [4, 12] and setup["output_len"] == [3, 8] and setup["endpoint"] == "completions"
    assert setup["machine"]["cores"] >= 1 and setup["prompts"] == "random token ids"
    (r,) = saved["results"]
    assert r["engine"] == SPEC and r["served_engine"] == "m6_prefix" and r["launch"]["args"] == ["--threads", "1"]
    assert (r["completed"], r["refused"], r["failed"]) == (6, 0, 0)
    tokenizer = Tokenizer(resolve_model("tiny-qwen3"))
    planned = http_load.plan_requests(6, (4, 12), (3, 8), seed=1, rate=40.0, tokenizer=tokenizer)
    reqs = sorted(r["requests"], key=lambda q: q["index"])
    assert [q["output_len"] for q in reqs] == [p.output_len for p in planned]  # the same seed, the same requests
    assert [q["arrival_s"] for q in reqs] == pytest.approx([p.arrival_s for p in planned])
    for q in reqs:
        assert q["status"] == 200 and q["ok"] and q["output_tokens"] == q["output_len"]  # ignore_eos: all of them
        assert q["prompt_tokens"] == q["input_len"]  # token ids, sent as they are
        assert q["send_s"] >= q["arrival_s"] and 0 < q["ttft_s"] <= q["e2e_s"]
        assert 1 <= len(q["itl_s"]) <= q["output_len"] - 1  # a chunk per token, or fewer (text held back)
    assert r["output_tokens"] == sum(p.output_len for p in planned)
    for key in ("requests_per_s", "output_tok_per_s", "total_tok_per_s", *http_load.FIGURES):
        assert r[key] is not None and r[key] > 0, key
    assert r["ttft_ms_p50"] <= r["ttft_ms_p90"] <= r["ttft_ms_p99"] and r["e2e_ms_p50"] <= r["e2e_ms_p99"]
    assert "6 / 6" in captured.out and "TTFT p99, ms ↓" in captured.out and "output tokens/s ↑" in captured.out
    assert max(len(line) for line in captured.out.splitlines()) <= 80
    assert captured.err.splitlines()[0].startswith(f"{SPEC}: ") and "6/6 requests" in captured.err  # no bar: one line


@pytest.fixture(scope="module")
def small_queue_server():
    """A server already running (the --url path), whose queue holds one request: the rest of a burst get 429."""
    with http_load.launched("m6_prefix", "m6_prefix", ["--threads", "1", "--max-queue", "1"], "tiny-qwen3", "tiny-qwen3",
                        None, 120) as (base, proc, _log):
        yield base, proc


def test_url_chat_with_max_concurrency_completes_everything(small_queue_server, capsys):
    base, _ = small_queue_server
    report = bench.main(["serve", "--url", base + "/v1", "--endpoint", "chat", "--num-requests", "4",
                         "--input-len", "6", "--output-len", "4", "--max-concurrency", "1"])
    (r,) = report["results"]
    assert report["setup"]["url"] == base and r["engine"] == base and r["completed"] == 4
    reqs = sorted(r["requests"], key=lambda q: q["index"])
    assert all(q["output_tokens"] == 4 for q in reqs)
    for a, b in itertools.pairwise(reqs):  # one at a time: each sent once the one before had finished
        assert b["send_s"] >= a["send_s"] + a["e2e_s"] - 1e-6


def test_url_burst_beyond_the_queue_counts_refusals_and_carries_on(small_queue_server, capsys):
    base, proc = small_queue_server
    report = bench.main(["serve", "--url", base, "--num-requests", "8", "--input-len", "200", "--output-len", "4"])
    (r,) = report["results"]
    assert r["refused"] >= 1 and r["completed"] >= 1 and r["completed"] + r["refused"] == 8 and r["failed"] == 0
    assert r["not_ok_by_status"] == {"429": r["refused"]}
    assert r["output_tokens"] == 4 * r["completed"]
    assert f"{r['refused']} / 0 (429: {r['refused']})" in capsys.readouterr().out
    assert proc.poll() is None  # the server is still up


def test_url_serving_another_model_is_one_line(small_queue_server, capsys):
    base, _ = small_queue_server
    err = exits_2_in_one_line(["serve", "--url", base, "--model", "org/other", "--num-requests", "1"], capsys)
    assert "serves 'tiny-qwen3', not 'org/other'" in err
