"""What m2 adds beyond batching itself: contiguous KV slots, reserved up front (Orca) or grown by doubling.
(Batching, scheduling, preemption and n > 1, which later engines keep, are tested in test_kept.py.)"""

import pytest

from m2_batching import LLM, SamplingParams
from shared.request import SequenceStatus
from shared.tools.testing import drain, kv_bytes_per_token, prompt_ids

MAX_LEN = 128


def make_llm(**options):
    return LLM(**{"model": "tiny-qwen3", "device": "cpu", "dtype": "float32", "max_model_len": MAX_LEN, **options})


def test_orca_reservation_bounds_concurrency_and_never_preempts():
    """Every slot reserves max_model_len positions, so a budget of 3 slots runs at most 3 sequences, and
    since a running sequence never needs more, nothing is preempted; most of what is reserved stays empty."""
    engine = make_llm(kv_cache_memory_bytes=3 * MAX_LEN * kv_bytes_per_token()).engine
    for i in range(6):
        engine.add_request(prompt_ids(10 + i, i), SamplingParams(temperature=0, max_tokens=20, ignore_eos=True))
    drain(engine)
    hist = engine.stats.history
    assert max(r.num_running for r in hist) == 3 and engine.stats.preemptions == 0
    assert all(r.kv_reserved_tokens == r.num_running * MAX_LEN for r in hist)
    assert all(r.kv_used_tokens < r.kv_reserved_tokens / 2 for r in hist)
    assert engine.cache.reserved_tokens == 0 and not engine.cache.slots  # all freed


def test_doubling_slots_preempt_the_newest():
    """Slots start at 64 positions (60 rounded up to a power of two) and double to 128; the budget, 192
    positions, holds three small slots or one grown and one small. When all three must grow at once the
    oldest grows, the newest is preempted first, then the middle one preempts itself."""
    engine = make_llm(kv_reservation="doubling", kv_cache_memory_bytes=192 * kv_bytes_per_token()).engine
    ids = [engine.add_request(prompt_ids(60, i), SamplingParams(temperature=0, max_tokens=40, ignore_eos=True))
           for i in range(3)]
    for _ in range(5):  # prefill, then decodes until all three hold 64 tokens: still fit
        engine.step()
    assert engine.stats.preemptions == 0 and engine.cache.reserved_tokens == 192
    engine.step()
    oldest, middle, newest = (engine.requests[i].seqs[0] for i in ids)
    assert engine.scheduler.running == [oldest] and list(engine.scheduler.waiting) == [middle, newest]
    assert middle.status is newest.status is SequenceStatus.PREEMPTED and engine.cache.slot(oldest).capacity == 128
    done = drain(engine)
    assert [done[rid].metrics.num_preemptions >= 1 for rid in ids] == [False, True, True]


def test_stats_measure_reserved_against_used():
    llm = make_llm(max_model_len=256)
    outs = llm.generate(["def a():", "import os\n"], SamplingParams(temperature=0, max_tokens=10, ignore_eos=True))
    hist = llm.engine.stats.history
    assert len(hist) == 10 and hist[0].num_prefill_tokens == sum(o.metrics.num_prompt_tokens for o in outs)
    assert all(r.kv_reserved_tokens == 2 * 256 for r in hist)  # one max_model_len slot per sequence
    assert hist[-1].kv_used_tokens == sum(o.metrics.num_prompt_tokens + 9 for o in outs)  # the last token is never fed
    assert 0 < llm.engine.stats.summary()["kv_mean_utilization"] < 0.2


def test_default_budget_always_holds_one_full_sequence():
    """Qwen3-0.6B in fp32 needs 224 KiB per token: a 40,960-token slot is 9.4 GB, more than the 1 GiB CPU
    default, so the default grows to fit one; an explicit budget that is too small fails."""
    from shared.config import default_kv_cache_memory_bytes

    assert default_kv_cache_memory_bytes("cpu") == 1 << 30
    assert default_kv_cache_memory_bytes("cpu", at_least=5 << 30) == 5 << 30
    engine = LLM(model="tiny-qwen3", device="cpu", dtype="float32").engine
    assert engine.cache.capacity_tokens == (1 << 30) // kv_bytes_per_token()


@pytest.mark.parametrize(
    ("options", "message"),
    [({"kv_reservation": "pow2"}, "kv_reservation must be one of"), ({"block_size": 16}, "unknown option")],
)
def test_bad_slot_options(options, message):
    with pytest.raises(ValueError, match=message):
        make_llm(**options)
