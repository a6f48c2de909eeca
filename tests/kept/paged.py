"""What every engine with a paged KV cache keeps, from m3 on: any block size gives HF's tokens, the pool is cut
from the budget, n > 1 shares the prompt's blocks (copy-on-write), preemption frees blocks, and every
block returns to the pool."""

import pytest

from shared.request import SequenceStatus
from shared.sampling import SamplingParams
from shared.tools.reference import parity_prompts
from shared.tools.testing import NEW_TOKENS, drain, hf_reference, kv_bytes_per_token, prompt_ids, tiny_tokenizer
from tests.kept.base import engine_name, llm, make_llm, tiny_llm  # noqa: F401

BLOCK = 16
GREEDY8 = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True)
SAMPLED4 = SamplingParams(temperature=1.0, top_k=50, max_tokens=24, ignore_eos=True, n=4, seed=5)


@pytest.mark.parametrize("block_size", [4, 1, 256])
def test_any_block_size_equals_hf(engine_name, block_size):
    """The nine parity prompts in one batch, their K/V scattered over blocks of 4, 1 or 256 positions (16, the
    default, runs in every engine's parity test)."""
    llm = make_llm(engine_name, block_size=block_size)
    outs = llm.generate(parity_prompts(tiny_tokenizer()), SamplingParams(temperature=0, max_tokens=NEW_TOKENS, ignore_eos=True))
    for i, (out, ref) in enumerate(zip(outs, hf_reference("tiny-qwen3"), strict=True)):
        assert out.outputs[0].token_ids == list(ref), f"prompt {i} diverges from HF (block_size {block_size})"


def test_pool_is_cut_from_the_budget(engine_name):
    per_token = kv_bytes_per_token()
    engine = make_llm(engine_name, max_model_len=128, kv_cache_memory_bytes=10 * BLOCK * per_token + 100).engine
    assert engine.cache.num_blocks == 10 and engine.cache.k[0].shape == (10, BLOCK, 2, 64) and len(engine.cache.k) == 4
    default = make_llm(engine_name).engine  # 1 GiB on CPU
    assert default.cache.num_blocks == (1 << 30) // (BLOCK * per_token)


def test_n_completions_share_the_prompt_blocks(llm):
    """A 37-token prompt fills blocks 0 and 1 and 5 positions of block 2. The prompt runs once (37 prefill
    tokens) and all four completions share its 3 blocks. At the first decode each writes position 37 into the
    shared block 2: three copy it, the last writes in place. Blocks 0 and 1 stay shared to the end."""
    engine = llm.engine
    rid = engine.add_request(list(range(100, 137)), SAMPLED4)
    engine.step()
    rec = engine.stats.history[-1]
    assert rec.num_prefill_tokens == 37 and rec.num_running == 4 and rec.kv_blocks_used == 3
    tables = [engine.kv.block_table(s) for s in engine.requests[rid].seqs]
    assert all(t == tables[0] for t in tables) and all(engine.kv.pool.ref_counts[b] == 4 for b in tables[0])
    engine.step()
    assert engine.stats.history[-1].kv_blocks_used == 3 + 3  # three copy-on-write copies of block 2
    tables = [engine.kv.block_table(s) for s in engine.requests[rid].seqs]
    assert len({t[2] for t in tables}) == 4 and all(engine.kv.pool.ref_counts[b] == 4 for b in tables[0][:2])
    drain(engine)
    assert engine.kv.pool.num_free == engine.kv.pool.num_blocks


def test_abort_returns_shared_and_private_blocks(llm):
    engine, pool = llm.engine, llm.engine.kv.pool
    ids = [engine.add_request(p, GREEDY8) for p in ("def a():", "def b():")]
    ids.append(engine.add_request("def c():", SamplingParams(temperature=0.7, max_tokens=8, n=3, seed=1)))
    engine.step()
    engine.step()  # the three completions of "def c():" have copied their partial block
    assert pool.num_used == 1 + 1 + 3
    seqs = engine.requests[ids[2]].seqs
    engine.abort_request(ids[2])
    assert pool.num_used == 2 and not any(pool.ref_counts[b] > 1 for b in range(pool.num_blocks))
    assert all(s.finish_reason == "abort" and s.seq_id not in engine.kv.block_tables for s in seqs)
    drain(engine)
    assert pool.num_free == pool.num_blocks


def test_preemption_takes_the_newest_when_no_block_is_free(engine_name):
    """Three 60-token prompts fill 12 of 13 blocks. Five steps later all three cross into their fifth block at
    once: the oldest takes the last free block, the middle one needs one too, so the newest gives its
    blocks back and waits at the front of the queue."""
    params = SamplingParams(temperature=0, max_tokens=40, ignore_eos=True)
    engine = make_llm(engine_name, max_model_len=128, kv_cache_memory_bytes=13 * BLOCK * kv_bytes_per_token()).engine
    ids = [engine.add_request(prompt_ids(60, i), params) for i in range(3)]
    for _ in range(5):  # the prefill, then decodes of positions 60 .. 63: all inside the fourth block
        engine.step()
    assert engine.stats.preemptions == 0 and engine.kv.pool.num_free == 1
    engine.step()  # position 64 opens a fifth block for each
    oldest, middle, newest = (engine.requests[i].seqs[0] for i in ids)
    assert engine.scheduler.running == [oldest, middle] and list(engine.scheduler.waiting) == [newest]
    assert newest.status is SequenceStatus.PREEMPTED and newest.seq_id not in engine.kv.block_tables
    assert engine.stats.history[-1].num_preempted == 1 and engine.kv.pool.num_free == 13 - 10
    done = drain(engine)
    assert done[ids[2]].metrics.num_preemptions >= 1 and done[ids[0]].metrics.num_preemptions == 0


def test_stats_count_blocks_and_utilisation(llm):
    llm.engine.stats.reset()
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
        ({"block_size": 12}, "block_size must be"),
        ({"block_size": 16.0}, "block_size must be"),
        ({"kv_cache_memory_bytes": 100_000}, "fewer than one sequence of max_model_len"),
        ({"attention_backend": "nope"}, "attention_backend must be one of"),
        ({"kv_reservation": "doubling"}, "unknown option"),
    ],
)
def test_bad_paged_options(engine_name, options, message):
    with pytest.raises(ValueError, match=message):
        make_llm(engine_name, max_model_len=256, **options)
