"""M3 engine behaviour: parallel sampling (n > 1) with shared blocks, the online API, stats, options, the CLI."""

import subprocess
import sys

import pytest

from m3_paged import LLM, SamplingParams
from shared.tools.testing import tiny_tokenizer

GREEDY8 = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True)
SAMPLED = SamplingParams(temperature=1.0, top_k=50, max_tokens=24, ignore_eos=True, n=4, seed=5)


@pytest.fixture(scope="module")
def llm():
    return LLM(model="tiny-qwen3", device="cpu", dtype="float32", max_model_len=256)


def run_to_end(engine) -> dict:
    finished = {}
    while engine.has_unfinished_requests():
        for out in engine.step():
            if out.finished:
                finished[out.request_id] = out
        engine.scheduler.check_invariants()
    return finished


def test_n_completions_are_reproducible_and_distinct(llm):
    first = llm.generate("def main():", SAMPLED)[0]
    again = LLM(model="tiny-qwen3", device="cpu", dtype="float32", max_model_len=256).generate("def main():", SAMPLED)[0]
    assert [c.index for c in first.outputs] == [0, 1, 2, 3] and first.finished
    assert [c.token_ids for c in first.outputs] == [c.token_ids for c in again.outputs]
    assert len({tuple(c.token_ids) for c in first.outputs}) == 4  # four different samples
    assert all(len(c.token_ids) == 24 and c.finish_reason == "length" for c in first.outputs)
    assert first.outputs[0].text == tiny_tokenizer().decode(first.outputs[0].token_ids)


def test_n_completions_share_the_prompt_blocks(llm):
    """A 37-token prompt fills blocks 0 and 1 and 5 positions of block 2. The prompt runs once (37 prefill
    tokens) and all four completions share its 3 blocks. At the first decode each writes position 37 into the
    shared block 2: three copy it, the last writes in place. Blocks 0 and 1 stay shared to the end."""
    engine = llm.engine
    ids = list(range(100, 137))
    rid = engine.add_request(ids, SAMPLED)
    engine.step()
    rec = engine.stats.history[-1]
    assert rec.num_prefill_tokens == 37 and rec.num_running == 4 and rec.kv_blocks_used == 3
    tables = [engine.kv.block_tables[s.seq_id] for s in engine.requests[rid].seqs]
    assert all(t == tables[0] for t in tables) and all(engine.kv.pool.ref_counts[b] == 4 for b in tables[0])
    engine.step()
    assert engine.stats.history[-1].kv_blocks_used == 3 + 3  # three copy-on-write copies of block 2
    tables = [engine.kv.block_tables[s.seq_id] for s in engine.requests[rid].seqs]
    assert len({t[2] for t in tables}) == 4 and all(engine.kv.pool.ref_counts[b] == 4 for b in tables[0][:2])
    run_to_end(engine)
    assert engine.kv.pool.num_free == engine.kv.pool.num_blocks


def test_n_completions_stop_independently(llm):
    """With EOS and a stop string respected, each completion stops on its own; the request finishes with the last."""
    out = llm.generate("def f(x):", SamplingParams(temperature=1.0, max_tokens=40, n=6, seed=2, stop=["\n\n"]))[0]
    lengths = {len(c.token_ids) for c in out.outputs}
    assert len(lengths) > 1 and out.finished and all(c.finish_reason in ("stop", "length") for c in out.outputs)
    assert all("\n\n" not in c.text for c in out.outputs)


def test_add_while_running(llm):
    engine = llm.engine
    first = engine.add_request("def a():", GREEDY8)
    engine.step()
    engine.step()
    second = engine.add_request("def b():", GREEDY8)  # joins at the next step: iteration-level batching
    engine.step()
    assert engine.stats.history[-1].num_decode_tokens == 1 and engine.stats.history[-1].num_prefill_tokens > 0
    done = run_to_end(engine)
    alone = llm.generate(["def a():", "def b():"], GREEDY8)
    assert [done[first].outputs[0].token_ids, done[second].outputs[0].token_ids] == [o.outputs[0].token_ids for o in alone]


@pytest.mark.parametrize("where", ["running", "waiting"])
def test_abort_frees_blocks_and_leaves_the_others_alone(llm, where):
    engine, pool = llm.engine, llm.engine.kv.pool
    ids = [engine.add_request(p, GREEDY8) for p in ("def a():", "def b():")]
    ids.append(engine.add_request("def c():", SamplingParams(temperature=0.7, max_tokens=8, n=3, seed=1)))
    if where == "running":
        engine.step()
        engine.step()  # the three completions of "def c():" have copied their partial block
        assert pool.num_used == 1 + 1 + 3
    seqs = engine.requests[ids[2]].seqs
    engine.abort_request(ids[2])
    assert pool.num_used == (2 if where == "running" else 0) and not any(pool.ref_counts[b] > 1 for b in range(pool.num_blocks))
    assert all(s.finish_reason == "abort" and s.seq_id not in engine.kv.block_tables for s in seqs)
    assert ids[2] not in engine.requests and not any(s in engine.scheduler.waiting for s in seqs)
    done = run_to_end(engine)
    assert set(done) == {ids[0], ids[1]} and pool.num_free == pool.num_blocks
    alone = llm.generate(["def a():", "def b():"], GREEDY8)
    assert [done[ids[0]].outputs[0].token_ids, done[ids[1]].outputs[0].token_ids] == [o.outputs[0].token_ids for o in alone]
    engine.abort_request("no-such-request")  # ignored


def test_duplicate_request_id_is_rejected(llm):
    engine = llm.engine
    engine.add_request("x", GREEDY8, request_id="same")
    with pytest.raises(ValueError, match="already in use"):
        engine.add_request("y", GREEDY8, request_id="same")
    run_to_end(engine)
    engine.add_request("y", GREEDY8, request_id="same")  # free again once finished
    run_to_end(engine)


def test_stats_measure_blocks_and_utilisation(llm):
    llm.engine.stats.history.clear()
    outs = llm.generate(["def a():", "import os\n"], SamplingParams(temperature=0, max_tokens=10, ignore_eos=True))
    hist, size = llm.engine.stats.history, llm.engine.cache.block_size
    cached = [o.metrics.num_prompt_tokens + 9 for o in outs]  # at the last step; the last token is never fed
    assert hist[-1].kv_used_tokens == sum(cached)
    assert hist[-1].kv_blocks_used == sum(-(-n // size) for n in cached)
    assert all(r.kv_reserved_tokens == r.kv_blocks_used * size for r in hist)
    summary = llm.engine.stats.summary()
    assert summary["kv_num_blocks"] == llm.engine.cache.num_blocks and summary["kv_peak_blocks_used"] == hist[-1].kv_blocks_used


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"block_size": 12}, "block_size must be one of"),
        ({"kv_cache_memory_bytes": 100_000}, "fewer than one sequence of max_model_len"),
        ({"kv_cache_memory_bytes": -5}, "kv_cache_memory_bytes must be a positive integer"),
        ({"attention_backend": "flash"}, "attention_backend must be one of"),
        ({"max_num_seqs": 0}, "max_num_seqs must be an integer >= 1"),
        ({"kv_reservation": "doubling"}, "unknown option"),
    ],
)
def test_bad_options(options, message):
    with pytest.raises(ValueError, match=message):
        LLM(model="tiny-qwen3", device="cpu", max_model_len=256, **options)


@pytest.mark.parametrize(("n", "message"), [(0, "n must be an integer >= 1"), (2.5, "n must be an integer >= 1")])
def test_bad_n(n, message):
    with pytest.raises(ValueError, match=message):
        SamplingParams(n=n)


def test_n_above_max_num_seqs_fails_alone():
    llm = LLM(model="tiny-qwen3", device="cpu", max_model_len=256, max_num_seqs=4)
    with pytest.raises(ValueError, match="n=5 completions per request, but this engine runs at most 4"):
        llm.generate("x", SamplingParams(n=5))
    assert len(llm.generate("x", SamplingParams(n=4, max_tokens=2))[0].outputs) == 4  # the engine serves on


def test_default_budget_fits_a_full_length_sequence():
    llm = LLM(model="tiny-qwen3", device="cpu", dtype="float32")  # 1 GiB on CPU: 16,384 blocks of 16 x 4 KiB
    assert llm.engine.cache.num_blocks == (1 << 30) // (16 * 4096)


def test_cli_streams_and_summarises():
    r = subprocess.run([sys.executable, "-m", "m3_paged", "def add(a, b):", "--max-tokens", "12", "--ignore-eos"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("def add(a, b):") and "12 tokens" in r.stdout and "TTFT" in r.stdout


def test_cli_error_is_one_line():
    r = subprocess.run([sys.executable, "-m", "m3_paged", "--max-tokens", "0"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "max_tokens must be an integer >= 1" in r.stderr and "Traceback" not in r.stderr
