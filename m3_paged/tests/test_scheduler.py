"""The scheduler on blocks: admission limits, more sequences than m2 in the same memory, preemption when no
block is free, and a randomized run that checks every block-accounting invariant after every action.

The randomized test interleaves adds (some with n > 1, which fork and copy-on-write), aborts and steps
under a pool so small that sequences are preempted again and again. After every action the invariants
must hold: every block is free or owned, a block's reference count equals the number of tables that hold
it, free + used = total, and no table is out of step with its sequence. A write into a shared block fails
an assertion in `slot_mapping`. At the end nothing may leak, and every request must have the same tokens
as a run with memory to spare.
"""

import random

import pytest

from m3_paged import LLM, SamplingParams
from shared.request import SequenceStatus

MAX_LEN = 128
BLOCK = 16
KV_BYTES_PER_TOKEN = 4096  # tiny-qwen3 in fp32: 2 (K, V) x 4 layers x 2 kv heads x 64 x 4 bytes


def make_llm(**options):
    return LLM(model="tiny-qwen3", device="cpu", dtype="float32", max_model_len=MAX_LEN, **options)


def prompt(n: int, salt: int = 0) -> list[int]:
    return [16 + (salt * 7919 + 31 * i) % 4000 for i in range(n)]


def drain(engine, check=True) -> dict:
    finished = {}
    while engine.has_unfinished_requests():
        for out in engine.step():
            if out.finished:
                assert out.request_id not in finished, "a request finished twice"
                finished[out.request_id] = out
        if check:
            engine.scheduler.check_invariants()
    return finished


def test_pool_is_sized_from_the_budget():
    engine = make_llm(kv_cache_memory_bytes=10 * BLOCK * KV_BYTES_PER_TOKEN + 100).engine
    assert engine.cache.bytes_per_token == KV_BYTES_PER_TOKEN and engine.cache.num_blocks == 10
    assert engine.cache.k[0].shape == (10, BLOCK, 2, 64) and len(engine.cache.k) == 4


def test_max_num_seqs_caps_the_batch():
    engine = make_llm(max_num_seqs=2).engine
    for i in range(5):
        engine.add_request(prompt(5, i), SamplingParams(temperature=0, max_tokens=3 + i, ignore_eos=True))
    engine.step()
    assert len(engine.scheduler.running) == 2 and len(engine.scheduler.waiting) == 3
    drain(engine)
    assert max(r.num_running for r in engine.stats.history) == 2


def test_token_budget_limits_prefills_per_step():
    engine = make_llm(max_num_batched_tokens=MAX_LEN).engine
    for i in range(3):
        engine.add_request(prompt(50, i), SamplingParams(temperature=0, max_tokens=4, ignore_eos=True))
    engine.step()  # 50 + 50 <= 128 < 50 + 50 + 50: two prompts fit in the first step
    assert [r.num_prefill_tokens for r in engine.stats.history] == [100]
    engine.step()  # 2 decodes + the third prompt
    assert engine.stats.history[-1].num_prefill_tokens == 50 and engine.stats.history[-1].num_decode_tokens == 2
    drain(engine)


def test_first_come_first_served():
    engine = make_llm(max_num_seqs=1).engine
    ids = [engine.add_request(prompt(4, i), SamplingParams(temperature=0, max_tokens=2, ignore_eos=True)) for i in range(4)]
    assert list(drain(engine)) == ids


def test_preemption_when_no_block_is_free_takes_the_newest_and_recomputes_it():
    """Three 60-token prompts fill 12 of 13 blocks. Five steps later all three cross into their fifth block at
    once: the oldest takes the last free block, the middle one needs one too, so the newest is preempted.
    It waits at the front of the queue, is recomputed later, and produces exactly its unpreempted tokens."""
    params = SamplingParams(temperature=0.8, top_p=0.95, max_tokens=40, seed=7, ignore_eos=True)
    prompts = [prompt(60, i) for i in range(3)]
    reference = make_llm().generate(prompts, [params] * 3, use_tqdm=False)
    engine = make_llm(kv_cache_memory_bytes=13 * BLOCK * KV_BYTES_PER_TOKEN).engine
    ids = [engine.add_request(p, params) for p in prompts]
    for _ in range(5):  # the prefill, then decodes of positions 60 .. 63: all inside the fourth block
        engine.step()
    assert engine.stats.preemptions == 0 and engine.kv.pool.num_free == 1
    engine.step()  # position 64 opens a fifth block for each
    oldest, middle, newest = (engine.requests[i].seqs[0] for i in ids)
    assert engine.scheduler.running == [oldest, middle] and list(engine.scheduler.waiting) == [newest]
    assert newest.status is SequenceStatus.PREEMPTED and newest.seq_id not in engine.kv.block_tables
    assert engine.stats.history[-1].num_preempted == 1 and engine.kv.pool.num_free == 13 - 10
    done = drain(engine)
    for rid, ref in zip(ids, reference, strict=True):
        assert done[rid].outputs[0].token_ids == ref.outputs[0].token_ids
    assert done[ids[2]].metrics.num_preemptions >= 1 and done[ids[0]].metrics.num_preemptions == 0


def randomized_run(seed: int):
    """Adds (some n > 1), aborts and steps in a random order under a pool of about two long sequences.
    Checks the invariants after every action; returns the finished outputs and what the run did."""
    rng = random.Random(seed)
    specs = []
    for i in range(24):
        n = rng.choice([1, 1, 2, 3])
        params = (SamplingParams(temperature=0, max_tokens=rng.randint(2, 60), ignore_eos=True, n=n) if i % 2 else
                  SamplingParams(temperature=0.9, top_k=rng.choice([0, 40]), max_tokens=rng.randint(2, 60),
                                 seed=1000 + i, ignore_eos=rng.random() < 0.7, n=n))
        specs.append((f"r{i}", prompt(rng.randint(1, 60), 100 * seed + i), params))
    block_size = rng.choice([4, 8, 16])
    num_blocks = (MAX_LEN + 64) // block_size  # about two long sequences: preemption is the normal case here
    engine = make_llm(block_size=block_size, kv_cache_memory_bytes=num_blocks * block_size * KV_BYTES_PER_TOKEN,
                      max_num_seqs=rng.choice([4, 8, 16])).engine
    pool = engine.kv.pool
    copies: list[tuple[int, int]] = []  # every copy-on-write the runner performs
    copy_blocks = engine.cache.copy_blocks
    engine.cache.copy_blocks = lambda planned: (copies.extend(planned), copy_blocks(planned))
    pending, aborted, finished = list(specs), set(), {}
    while pending or engine.has_unfinished_requests():
        action = rng.random()
        if pending and action < 0.35:
            rid, ids, params = pending.pop(0)
            engine.add_request(ids, params, request_id=rid)
        elif 0.35 <= action < 0.37 and engine.requests:  # about one action in fifty aborts
            rid = rng.choice(sorted(engine.requests))
            engine.abort_request(rid)
            aborted.add(rid)
        else:
            for out in engine.step():  # a write into a shared block would fail an assertion in slot_mapping
                if out.finished:
                    assert out.request_id not in finished, "a request finished twice"
                    finished[out.request_id] = out
        engine.scheduler.check_invariants()
        assert pool.num_free + pool.num_used == pool.num_blocks
    assert engine.stats.preemptions > 0, "the pool was meant to force preemptions"
    assert copies and all(src != dst for src, dst in copies), "n > 1 was meant to copy shared blocks on write"
    assert set(finished) == {rid for rid, _, _ in specs} - aborted and not finished.keys() & aborted
    assert pool.num_free == pool.num_blocks and not any(pool.ref_counts) and not engine.kv.block_tables  # no leak
    assert not engine.requests and not engine.scheduler.has_unfinished()
    return specs, finished


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_randomized_run_keeps_every_block_invariant(seed):
    specs, finished = randomized_run(seed)
    # greedy requests: the same tokens as all of them at once with memory to spare, for every completion
    kept = [(rid, ids, params) for rid, ids, params in specs if rid in finished and params.greedy]
    ref = make_llm().generate([ids for _, ids, _ in kept], [p for _, _, p in kept], use_tqdm=False)
    for (rid, _, _), r in zip(kept, ref, strict=True):
        assert [c.token_ids for c in finished[rid].outputs] == [c.token_ids for c in r.outputs], f"{rid} changed"
    # every request, sampled ones included, is reproduced bit for bit by a second run of the same schedule.
    # (Against the spare-memory run, a seeded sample can differ: a different batch changes the logits by
    # ~1e-6, enough to flip an exact near-tie of the exponential race. Seed 1 has one, at r4's 13th token.)
    _, again = randomized_run(seed)
    assert {rid: [c.token_ids for c in o.outputs] for rid, o in finished.items()} == \
           {rid: [c.token_ids for c in o.outputs] for rid, o in again.items()}
