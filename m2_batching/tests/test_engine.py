"""M2 engine behaviour: the online API (add and abort while others run), outputs, options, stats, the CLI."""

import subprocess
import sys

import pytest

from m2_batching import LLM, SamplingParams
from shared.tools.testing import tiny_tokenizer

GREEDY8 = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True)


@pytest.fixture(scope="module")
def llm():
    return LLM(model="tiny-qwen3", device="cpu", dtype="float32", max_model_len=256)


def run_to_end(engine) -> dict:
    finished = {}
    while engine.has_unfinished_requests():
        for out in engine.step():
            if out.finished:
                finished[out.request_id] = out
    return finished


def test_prompt_forms_order_and_metrics(llm):
    ids = tiny_tokenizer().encode("import os\n")
    outs = llm.generate(["def a():", ids, "class B:"], SamplingParams(temperature=0, max_tokens=5))
    assert [o.prompt for o in outs] == ["def a():", None, "class B:"] and outs[1].prompt_token_ids == ids
    assert all(len(o.outputs[0].token_ids) == 5 and o.outputs[0].finish_reason == "length" for o in outs)
    assert all(o.metrics.ttft > 0 and o.metrics.tpot > 0 and o.metrics.e2e >= o.metrics.ttft for o in outs)
    single = llm.generate("class B:", SamplingParams(temperature=0, max_tokens=5))
    assert single[0].outputs[0].token_ids == outs[2].outputs[0].token_ids


def test_text_matches_tokens(llm):
    out = llm.generate(["def main():", "x = "], SamplingParams(temperature=0, max_tokens=30, ignore_eos=True))
    assert all(o.outputs[0].text == tiny_tokenizer().decode(o.outputs[0].token_ids) for o in out)


def test_seeded_sampling_does_not_depend_on_the_batch(llm):
    """A seeded request draws from its own generator: alone or among others, the same tokens."""
    p = SamplingParams(temperature=0.9, top_p=0.95, top_k=50, max_tokens=20, seed=3, ignore_eos=True)
    alone = llm.generate("def", p)[0].outputs[0].token_ids
    crowd = llm.generate(["class X:", "def", "import re\n"], [GREEDY8, p, SamplingParams(temperature=1.0, max_tokens=12)])
    assert crowd[1].outputs[0].token_ids == alone


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
def test_abort_frees_memory_and_leaves_the_others_alone(llm, where):
    engine = llm.engine
    ids = [engine.add_request(p, GREEDY8) for p in ("def a():", "def b():", "def c():")]
    if where == "running":
        engine.step()
        assert engine.cache.reserved_tokens == 3 * 256
    seq = engine.requests[ids[1]].seqs[0]
    engine.abort_request(ids[1])
    assert engine.cache.reserved_tokens == (2 * 256 if where == "running" else 0)
    assert seq.finish_reason == "abort" and seq.seq_id not in engine.cache.slots and ids[1] not in engine.requests
    assert seq not in engine.scheduler.running and seq not in engine.scheduler.waiting
    done = run_to_end(engine)
    assert set(done) == {ids[0], ids[2]} and engine.cache.reserved_tokens == 0
    alone = llm.generate(["def a():", "def c():"], GREEDY8)
    assert [done[ids[0]].outputs[0].token_ids, done[ids[2]].outputs[0].token_ids] == [o.outputs[0].token_ids for o in alone]
    engine.abort_request("no-such-request")  # ignored


def test_duplicate_request_id_is_rejected(llm):
    engine = llm.engine
    engine.add_request("x", GREEDY8, request_id="same")
    with pytest.raises(ValueError, match="already in use"):
        engine.add_request("y", GREEDY8, request_id="same")
    run_to_end(engine)
    engine.add_request("y", GREEDY8, request_id="same")  # free again once finished
    run_to_end(engine)


def test_stats_measure_reserved_vs_used(llm):
    llm.engine.stats.history.clear()
    outs = llm.generate(["def a():", "import os\n"], SamplingParams(temperature=0, max_tokens=10, ignore_eos=True))
    hist = llm.engine.stats.history
    assert len(hist) == 10 and hist[0].num_prefill_tokens == sum(o.metrics.num_prompt_tokens for o in outs)
    assert all(r.kv_reserved_tokens == 2 * 256 for r in hist)  # one max_model_len slot per sequence
    assert hist[-1].kv_used_tokens == sum(o.metrics.num_prompt_tokens + 9 for o in outs)  # the last token is never fed
    assert 0 < llm.engine.stats.summary()["kv_mean_utilization"] < 0.2


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"max_num_seqs": 0}, "max_num_seqs must be an integer >= 1"),
        ({"max_num_batched_tokens": 100}, "max_num_batched_tokens must be an integer >= max_model_len"),
        ({"kv_cache_memory_bytes": 1000}, "fewer than one sequence of max_model_len"),
        ({"kv_cache_memory_bytes": -5}, "kv_cache_memory_bytes must be a positive integer"),
        ({"kv_reservation": "pow2"}, "kv_reservation must be one of"),
        ({"block_size": 16}, "unknown option"),
    ],
)
def test_bad_options(options, message):
    with pytest.raises(ValueError, match=message):
        LLM(model="tiny-qwen3", device="cpu", max_model_len=256, **options)


def test_cli_streams_and_summarises():
    r = subprocess.run([sys.executable, "-m", "m2_batching", "def add(a, b):", "--max-tokens", "12", "--ignore-eos"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("def add(a, b):") and "12 tokens" in r.stdout and "TTFT" in r.stdout


def test_cli_error_is_one_line():
    r = subprocess.run([sys.executable, "-m", "m2_batching", "--top-p", "1.5"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "top_p must be in (0, 1]" in r.stderr and "Traceback" not in r.stderr


def test_default_budget_always_holds_one_full_sequence():
    """Qwen3-0.6B in fp32 needs 224 KiB per token: a 40,960-token slot is 9.4 GB, more than the 1 GiB CPU
    default. Without an explicit budget the engine still starts; an explicit one that is too small fails."""
    from shared.config import default_kv_cache_memory_bytes

    assert default_kv_cache_memory_bytes("cpu") == 1 << 30
    assert default_kv_cache_memory_bytes("cpu", at_least=5 << 30) == 5 << 30
    llm = LLM(model="tiny-qwen3", device="cpu", dtype="float32")  # 8,192 positions x 4 KiB = 32 MiB: the default fits
    assert llm.engine.cache.capacity_tokens == (1 << 30) // 4096


def test_cli_max_model_len():
    r = subprocess.run([sys.executable, "-m", "m2_batching", "def f():", "--max-tokens", "50", "--ignore-eos",
                        "--max-model-len", "20"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "(length)" in r.stdout and "50 tokens" not in r.stdout  # stopped at the context, before max_tokens
