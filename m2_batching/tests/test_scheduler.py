"""The scheduler: admission limits, first-come-first-served order, preemption by recompute, invariants.

The last test is randomized: adds, aborts and steps interleaved under a KV budget so tight that sequences
are preempted again and again. After every step the scheduler's invariants must hold. Every request must
finish exactly once, and with the same tokens as a run with memory to spare (greedy and seeded sampling).
"""

import random

import pytest

from m2_batching import LLM, SamplingParams
from shared.request import SequenceStatus

MAX_LEN = 128
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


def test_kv_bytes_per_token_constant():
    assert make_llm().engine.cache.bytes_per_token == KV_BYTES_PER_TOKEN


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


def test_orca_max_reservation_bounds_concurrency_and_never_preempts():
    """Every slot reserves max_model_len positions, so a budget of 3 slots runs at most 3 sequences,
    and since a running sequence never needs more, nothing is preempted."""
    engine = make_llm(kv_cache_memory_bytes=3 * MAX_LEN * KV_BYTES_PER_TOKEN).engine
    for i in range(6):
        engine.add_request(prompt(10 + i, i), SamplingParams(temperature=0, max_tokens=20, ignore_eos=True))
    drain(engine)
    hist = engine.stats.history
    assert max(r.num_running for r in hist) == 3 and engine.stats.preemptions == 0
    assert all(r.kv_reserved_tokens == r.num_running * MAX_LEN for r in hist)
    assert all(r.kv_used_tokens < r.kv_reserved_tokens / 2 for r in hist)  # less than half of it ever holds a token
    assert engine.cache.reserved_tokens == 0 and not engine.cache.slots  # all freed


def test_first_come_first_served():
    engine = make_llm(max_num_seqs=1).engine
    ids = [engine.add_request(prompt(4, i), SamplingParams(temperature=0, max_tokens=2, ignore_eos=True)) for i in range(4)]
    order = list(drain(engine))
    assert order == ids


def test_preemption_takes_the_newest_and_recomputes_it():
    """Three sequences must grow at the same step under a budget for only one grown slot. The oldest grows,
    the newest is preempted first, then the middle one preempts itself. Both wait at the front of the
    queue in arrival order, are recomputed later and produce exactly what they would have without
    preemption."""
    params = SamplingParams(temperature=0.8, top_p=0.95, max_tokens=40, seed=7, ignore_eos=True)
    prompts = [prompt(60, i) for i in range(3)]
    reference = make_llm().generate(prompts, [params] * 3, use_tqdm=False)
    # slots start at 64 positions (60 rounded up to a power of two) and double to 128 = MAX_LEN;
    # the budget, 192 positions, holds three small slots or one grown one and one small one
    engine = make_llm(kv_reservation="doubling", kv_cache_memory_bytes=192 * KV_BYTES_PER_TOKEN).engine
    ids = [engine.add_request(p, params) for p in prompts]
    for _ in range(5):  # prefill, then decodes until all three hold 64 tokens: still fit
        engine.step()
    assert engine.stats.preemptions == 0 and len(engine.scheduler.running) == 3
    engine.step()  # all need position 64 -> the oldest's slot doubles -> the newest make room
    oldest, middle, newest = (engine.requests[i].seqs[0] for i in ids)
    assert engine.scheduler.running == [oldest] and list(engine.scheduler.waiting) == [middle, newest]
    assert middle.status is newest.status is SequenceStatus.PREEMPTED
    assert engine.stats.history[-1].num_preempted == 2 and engine.stats.history[-1].num_running == 1
    done = drain(engine)
    for rid, ref in zip(ids, reference, strict=True):
        assert done[rid].outputs[0].token_ids == ref.outputs[0].token_ids
    assert [done[rid].metrics.num_preemptions >= 1 for rid in ids] == [False, True, True]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_randomized_run_under_a_tight_budget(seed):
    rng = random.Random(seed)
    specs = []
    for i in range(24):
        params = (SamplingParams(temperature=0, max_tokens=rng.randint(2, 60), ignore_eos=True) if i % 2 else
                  SamplingParams(temperature=0.9, top_k=rng.choice([0, 40]), max_tokens=rng.randint(2, 60),
                                 seed=1000 + i, ignore_eos=rng.random() < 0.7))
        specs.append((f"r{i}", prompt(rng.randint(1, 60), 100 * seed + i), params))
    budget_tokens = MAX_LEN + 64  # about two grown sequences: preemption is the normal case here
    engine = make_llm(kv_reservation="doubling", kv_cache_memory_bytes=budget_tokens * KV_BYTES_PER_TOKEN,
                      max_num_seqs=rng.choice([4, 8, 16])).engine
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
            for out in engine.step():
                if out.finished:
                    assert out.request_id not in finished, "a request finished twice"
                    finished[out.request_id] = out
        engine.scheduler.check_invariants()
        assert engine.cache.reserved_tokens <= budget_tokens
    assert engine.stats.preemptions > 0, "the budget was meant to force preemptions"
    assert set(finished) == {rid for rid, _, _ in specs} - aborted and not finished.keys() & aborted
    assert engine.cache.reserved_tokens == 0 and not engine.requests
    # the same requests with memory to spare, all at once: identical tokens
    kept = [(rid, ids, params) for rid, ids, params in specs if rid in finished]
    ref = make_llm().generate([ids for _, ids, _ in kept], [p for _, _, p in kept], use_tqdm=False)
    for (rid, _, _), r in zip(kept, ref, strict=True):
        assert finished[rid].outputs[0].token_ids == r.outputs[0].token_ids, f"{rid} changed under preemption"
        assert finished[rid].outputs[0].finish_reason == r.outputs[0].finish_reason
